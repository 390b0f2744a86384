"""Moshi's text decoder (MoshiForCausalLM): Llama's attention with each projection wrapped
(`q_proj.linear`), RMSNorms, and a gated MLP whose `fc1` rows are `[gate | up]`, each half
of `ffn_dim` (so the space is "ffn_half"), and `fc2` reads one half. The embedding has one
extra row (vocab + 1); rotary positions."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, linear, norm
from .llama import LLAMA, L

A = L + r"self_attn\."

MOSHI = replace(
    LLAMA,
    name="moshi",
    architectures=("MoshiForCausalLM",),
    model_types=("moshi",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        (A + r"q_proj\.linear\.weight", linear("q", "hidden", q_scaled=True)),
        (A + r"[kv]_proj\.linear\.weight", linear("kv", "hidden")),
        (A + r"o_proj\.linear\.weight", linear("hidden", "q", writes_residual=True)),
        (L + r"mlp\.fc1\.weight", linear(("ffn_half", "ffn_half"), "hidden")),
        (L + r"mlp\.fc2\.weight", linear("hidden", "ffn_half", writes_residual=True)),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={**LLAMA.config_keys, "ffn": ("ffn_dim",)},
)
