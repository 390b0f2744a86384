"""StableLM: Llama's projections (q/k/v biases with `use_qkv_bias`), LayerNorms with bias,
partial rotary, and optionally a parallel residual (no post-attention norm). Its per-head
q/k LayerNorms (`qk_layernorm`) are one module per head index (`q_layernorm.norms.<h>`):
each is written once per head that copies it."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import attention, gated_mlp
from .llama import LLAMA, L

STABLELM = replace(
    LLAMA,
    name="stablelm",
    architectures=("StableLmForCausalLM",),
    model_types=("stablelm",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *gated_mlp(L),
        (L + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (r"model\.norm\.(weight|bias)", norm()),
        (L + r"self_attn\.q_layernorm\.norms\.(?P<head>\d+)\.weight", norm("head", per_head="q")),
        (L + r"self_attn\.k_layernorm\.norms\.(?P<head>\d+)\.weight", norm("head", per_head="kv")),
        (r"lm_head\.weight", head()),
    ),
    tie_keepers=(r"model\.norm\.(weight|bias)",),
)
