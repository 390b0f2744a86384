"""Qwen3: Llama's layout plus RMSNorms on q and k over each head's head_dim, which heads
never widen."""

from dataclasses import replace

from .base import norm
from .llama import LLAMA, L

QWEN3 = replace(
    LLAMA,
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    model_types=("qwen3",),
    tensors=(*LLAMA.tensors, (L + r"self_attn\.[qk]_norm\.weight", norm("head"))),
)
