"""Cohere (Command R) and Cohere 2: Llama's projections in a parallel block
(`x + attn(ln(x)) + mlp(ln(x))`: both branches read the same cloned input), LayerNorm without
bias, interleaved rotary (within each head), `logit_scale` multiplying the logits (a constant),
tied head. Cohere's optional q/k LayerNorms have weights of shape (heads, head_dim): the
head axis is copied with the heads, the head_dim axis never widens."""

from __future__ import annotations

from dataclasses import replace

from .base import OUT, Role, embedding, head, norm
from .blocks import attention, gated_mlp
from .llama import LLAMA, L

COHERE = replace(
    LLAMA,
    name="cohere",
    architectures=("CohereForCausalLM", "Cohere2ForCausalLM"),
    model_types=("cohere", "cohere2"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *gated_mlp(L),
        (L + r"input_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
        (L + r"self_attn\.q_norm\.weight", Role((("heads", OUT), ("head", OUT)))),
        (L + r"self_attn\.k_norm\.weight", Role((("kv_heads", OUT), ("head", OUT)))),
    ),
    default_tie=True,
)
