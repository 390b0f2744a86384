"""Apertus: Llama's projections with per-head q/k RMSNorms, norms named
attention_/feedforward_layernorm, and an MLP without gate whose xIELU activation has
learnable scalars (alpha_p, alpha_n, beta, eps): element-wise, so they are copied as they are."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, fixed, head, norm
from .blocks import attention, mlp
from .llama import LLAMA, L

APERTUS = replace(
    LLAMA,
    name="apertus",
    architectures=("ApertusForCausalLM", "Apertus1p5TextForCausalLM"),
    model_types=("apertus", "apertus1p5_text"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        (L + r"self_attn\.[qk]_norm\.weight", norm("head")),
        *mlp(L + r"mlp\.", "up_proj", "down_proj"),
        (L + r"mlp\.act_fn\.alpha_[pn]", fixed(1)),
        (L + r"mlp\.act_fn\.(beta|eps)", fixed(0)),
        (L + r"(attention|feedforward)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
)
