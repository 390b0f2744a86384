"""Phi-3 (and Phi-4-mini): Llama's layout with fused projections — `qkv_proj` rows are
`[q | k | v]` with GQA sizes (H·hd, G·hd, G·hd), `gate_up_proj` rows are `[gate | up]`.
Each part is cloned in its own place (a fused space), never the fused matrix as one block."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, embedding, head, linear, norm
from .llama import LLAMA, L

QKV = ("q", "kv", "kv")

PHI3 = replace(
    LLAMA,
    name="phi3",
    architectures=("Phi3ForCausalLM",),
    model_types=("phi3",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        (L + r"self_attn\.qkv_proj\.weight", linear(QKV, "hidden", q_scaled=True)),
        (L + r"self_attn\.qkv_proj\.bias", bias(QKV, q_scaled=True)),
        (L + r"self_attn\.o_proj\.weight", linear("hidden", "q")),
        (L + r"self_attn\.o_proj\.bias", bias("hidden")),
        (L + r"mlp\.gate_up_proj\.weight", linear(("ffn", "ffn"), "hidden")),
        (L + r"mlp\.gate_up_proj\.bias", bias(("ffn", "ffn"))),
        (L + r"mlp\.down_proj\.weight", linear("hidden", "ffn")),
        (L + r"mlp\.down_proj\.bias", bias("hidden")),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
)
