"""Doge (dense; its CDMoE variant has expert tensors this table does not map): Llama's
projections with per-head q/k RMSNorms, learnable per-channel residual gains, and dynamic
mask attention — `dt_proj` maps the values (kv heads × head_dim) to one score per kv head,
and `A` holds one rate per kv head: both follow the kv head copies."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, linear, norm
from .llama import LLAMA, L

DOGE = replace(
    LLAMA,
    name="doge",
    # depth.py: a block computes `g ⊙ x + f(x)` with learned gains g, not `x + f(x)`
    depth_refusal=lambda cfg: (
        "its blocks scale the residual stream by learned gains (input_residual, "
        "post_attention_residual), so a block with zeroed output projections is not the identity"
    ),
    architectures=("DogeForCausalLM",),
    model_types=("doge",),
    tensors=(
        *LLAMA.tensors,
        (L + r"self_attn\.[qk]_norm\.weight", norm("head")),
        (L + r"self_attn\.dt_proj\.weight", linear("kv_heads", "kv")),
        (L + r"self_attn\.dt_proj\.bias", bias("kv_heads")),
        (L + r"self_attn\.A", bias("kv_heads")),
        (L + r"(input|post_attention)_residual", bias("hidden")),
    ),
)
