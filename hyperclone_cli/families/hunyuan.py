"""Hunyuan v1 dense: Llama's layout plus per-head q/k RMSNorms named query_/key_layernorm."""

from dataclasses import replace

from .base import norm
from .llama import LLAMA, L

HUNYUAN_DENSE = replace(
    LLAMA,
    name="hunyuan_v1_dense",
    architectures=("HunYuanDenseV1ForCausalLM",),
    model_types=("hunyuan_v1_dense",),
    tensors=(*LLAMA.tensors, (L + r"self_attn\.(query|key)_layernorm\.weight", norm("head"))),
)
