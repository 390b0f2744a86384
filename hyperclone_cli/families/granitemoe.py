"""Granite-MoE and GraniteMoeShared: Llama's attention; experts always fused 3-D, on disk
as `block_sparse_moe.input_linear.weight` [E, 2I, H] (`[gate | up]`) and
`output_linear.weight` [E, H, I] with the router at `router.layer.weight` (transformers 5
names them `experts.gate_up_proj`, `experts.down_proj`, `router.weight`: both are read).
GraniteMoeShared adds a dense `shared_mlp` with fused input_linear [2S, H]. The embedding,
residual, attention and logit multipliers do not depend on the width."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, linear, norm
from .blocks import attention
from .llama import LLAMA, L
from .moe import fused_experts, router

MOE = L + r"block_sparse_moe\."
SHARED = L + r"shared_mlp\."

GRANITEMOE = replace(
    LLAMA,
    name="granitemoe",
    architectures=("GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM"),
    model_types=("granitemoe", "granitemoeshared"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *router(MOE + r"router\.(layer\.)?weight"),
        *fused_experts(MOE + r"input_linear\.weight", MOE + r"output_linear\.weight"),
        *fused_experts(MOE + r"experts\.gate_up_proj", MOE + r"experts\.down_proj"),
        (SHARED + r"input_linear\.weight", linear(("shared", "shared"), "hidden")),
        (SHARED + r"output_linear\.weight", linear("hidden", "shared")),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
    ffn_spaces=(("shared", "shared_intermediate_size", None),),
)
