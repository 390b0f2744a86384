"""Phi-3 (and Phi-4-mini): Llama's layout with fused projections — `qkv_proj` rows are
`[q | k | v]` with GQA sizes (H·hd, G·hd, G·hd), `gate_up_proj` rows are `[gate | up]`.
Each part is cloned in its own place (a fused space), never the fused matrix as one block."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import fused_attention, gated_mlp
from .llama import LLAMA, L

PHI3 = replace(
    LLAMA,
    name="phi3",
    architectures=("Phi3ForCausalLM",),
    model_types=("phi3",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *fused_attention(L + r"self_attn\.", "qkv_proj", "o_proj"),
        *gated_mlp(L, fused=True),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
)
