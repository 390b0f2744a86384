"""OLMo (AI2). OLMo 1: Llama's projections, LayerNorm *without* parameters and a tied head —
no norm can carry the 1/n scale, so the tie is removed and lm_head written (plan.py does
this when no tie keeper exists). OLMo 2 and 3: RMSNorm after each sublayer (no pre-norm),
and q/k RMSNorms over the whole projection (all heads at once, so they widen with q/kv)."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import attention, gated_mlp
from .llama import LLAMA, L

OLMO = replace(
    LLAMA,
    name="olmo",
    architectures=("OlmoForCausalLM",),
    model_types=("olmo",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *gated_mlp(L),
        (r"lm_head\.weight", head()),
    ),
    tie_keepers=(),  # parameter-free LayerNorm: a tie is always removed
)

OLMO2 = replace(
    LLAMA,
    name="olmo2",
    architectures=("Olmo2ForCausalLM", "Olmo3ForCausalLM"),
    model_types=("olmo2", "olmo3"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        (L + r"self_attn\.q_norm\.weight", norm("q")),
        (L + r"self_attn\.k_norm\.weight", norm("kv")),
        *gated_mlp(L),
        (L + r"(post_attention|post_feedforward)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
)
