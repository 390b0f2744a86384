"""Mixtral and PhiMoE: Llama's attention, and in place of the MLP a router and E gated
experts (`block_sparse_moe.experts.{e}.w1|w3|w2` on disk, or the fused 3-D
`mlp.experts.gate_up_proj` / `down_proj` of transformers 5 and mergekit). PhiMoE adds
LayerNorms with biases and an optional lm_head bias."""

from __future__ import annotations

from dataclasses import replace

from .base import OUT, Role, embedding, head, norm
from .blocks import attention
from .llama import LLAMA, L
from .moe import experts, router

MOE = L + r"(block_sparse_moe|mlp)\."

MIXTRAL = replace(
    LLAMA,
    name="mixtral",
    architectures=("MixtralForCausalLM",),
    model_types=("mixtral",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *router(MOE + r"gate\.weight"),
        *experts(MOE + r"experts\.", "w[13]", "w2"),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
)

PHIMOE = replace(
    MIXTRAL,
    name="phimoe",
    architectures=("PhimoeForCausalLM",),
    model_types=("phimoe",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *router(MOE + r"(gate|router)\.weight"),
        *experts(MOE + r"experts\.", "w[13]", "w2"),
        (L + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (r"model\.norm\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
        (r"lm_head\.bias", Role((("fixed", OUT),))),  # over the vocabulary: never widens
    ),
    tie_keepers=(r"model\.norm\.(weight|bias)",),
)
