"""StableLM: Llama's projections (q/k/v biases with `use_qkv_bias`), LayerNorms with bias,
partial rotary, and optionally a parallel residual (no post-attention norm). Its per-head
q/k LayerNorms (`qk_layernorm`) are one module per head index, so replicated heads would
need new modules: refused by name."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import attention, gated_mlp
from .llama import LLAMA, L


def _refuse(cfg: dict) -> str | None:
    if cfg.get("qk_layernorm"):
        return (
            "qk_layernorm stores one LayerNorm per head index (q_layernorm.norms.<h>), "
            "which hyperclone cannot replicate yet"
        )
    return None


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
        (r"lm_head\.weight", head()),
    ),
    tie_keepers=(r"model\.norm\.(weight|bias)",),
    refuse=_refuse,
)
