"""Qwen2-MoE, Qwen3-MoE and OLMoE: `mlp.gate` router and `mlp.experts` (per expert
`{e}.gate_proj|up_proj|down_proj`, or fused 3-D). Qwen2-MoE adds a shared expert behind a
sigmoid gate (`shared_expert_gate` [1, H]: a router-like input-side widening, no noise);
the Qwen MoEs size experts by `moe_intermediate_size` and may keep dense MLP layers
(`mlp_only_layers`) of `intermediate_size`. OLMoE has OLMo 2's whole-projection q/k norms
with pre-norm blocks, and experts of `intermediate_size`."""

from __future__ import annotations

from dataclasses import replace

from .base import linear, norm
from .llama import LLAMA, L
from .moe import experts, router

M = L + r"mlp\."
SHARED = M + r"shared_expert\."

QWEN2_MOE = replace(
    LLAMA,
    name="qwen2_moe",
    architectures=("Qwen2MoeForCausalLM",),
    model_types=("qwen2_moe",),
    tensors=(
        *LLAMA.tensors,  # embedding, attention, dense MLP layers, norms, head
        *router(M + r"gate\.weight"),
        *experts(M + r"experts\.", "(gate|up)_proj", "down_proj", space="expert"),
        (SHARED + r"(gate|up)_proj\.weight", linear("shared", "hidden")),
        (SHARED + r"down_proj\.weight", linear("hidden", "shared")),
        *router(M + r"shared_expert_gate\.weight"),
    ),
    ffn_spaces=(
        ("expert", "moe_intermediate_size", None),
        ("shared", "shared_expert_intermediate_size", None),
    ),
)

QWEN3_MOE = replace(
    LLAMA,
    name="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM",),
    model_types=("qwen3_moe",),
    tensors=(
        *LLAMA.tensors,
        (L + r"self_attn\.[qk]_norm\.weight", norm("head")),
        *router(M + r"gate\.weight"),
        *experts(M + r"experts\.", "(gate|up)_proj", "down_proj", space="expert"),
    ),
    ffn_spaces=(("expert", "moe_intermediate_size", None),),
)

OLMOE = replace(
    LLAMA,
    name="olmoe",
    architectures=("OlmoeForCausalLM",),
    model_types=("olmoe",),
    tensors=(
        *LLAMA.tensors,
        (L + r"self_attn\.q_norm\.weight", norm("q")),
        (L + r"self_attn\.k_norm\.weight", norm("kv")),
        *router(M + r"gate\.weight"),
        *experts(M + r"experts\.", "(gate|up)_proj", "down_proj"),
    ),
)
