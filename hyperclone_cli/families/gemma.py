"""Gemma: Llama's projections, but the embedding is multiplied by √hidden_size in the
forward pass and RMSNorm computes `x̂ · (1 + w)`; tied head; MQA in the 2B size.

After widening, √hidden grows by √n, so the embedding is stored as `[E, E, …] / √n` (a =
1/√n); the tied head then reads `a·E`, and the final norm's gain `(1 + w)` is scaled by
1/(n·a) = 1/√n to compensate. Gemma 2 adds norms before and after the MLP; its attention
scale comes from `query_pre_attn_scalar`, not head_dim, and its soft-capping acts on
unchanged scores and logits."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import attention, gated_mlp
from .llama import LLAMA, L


def _sqrt_hidden_multiplier(n: int) -> float:
    return n**-0.5


GEMMA = replace(
    LLAMA,
    name="gemma",
    architectures=("GemmaForCausalLM", "Gemma2ForCausalLM"),
    model_types=("gemma", "gemma2"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *gated_mlp(L),
        (
            L + r"(input|post_attention|pre_feedforward|post_feedforward)_layernorm\.weight",
            norm(offset=1.0),
        ),
        (r"model\.norm\.weight", norm(offset=1.0)),
        (r"lm_head\.weight", head()),
    ),
    embed_multiplier=_sqrt_hidden_multiplier,
    default_tie=True,
)

# Gemma 3 (text-only Gemma3ForCausalLM, the 1B size): Gemma 2's layout plus `(1 + w)`
# RMSNorms on q and k over each head's head_dim, which heads never widen.
GEMMA3 = replace(
    GEMMA,
    name="gemma3",
    architectures=("Gemma3ForCausalLM",),
    model_types=("gemma3_text",),
    tensors=(*GEMMA.tensors, (L + r"self_attn\.[qk]_norm\.weight", norm("head", offset=1.0))),
)

# VaultGemma: Gemma 2 without the norms after sublayers (its names are a subset), the same
# √hidden embedding scale (a scaled embedding module), soft-capping and query_pre_attn_scalar.
VAULTGEMMA = replace(
    GEMMA, name="vaultgemma", architectures=("VaultGemmaForCausalLM",), model_types=("vaultgemma",)
)
