"""DeepSeek-V2 / V3: multi-head latent attention and MoE with shared experts.

MLA projects the residual stream down to low ranks (`q_a_proj` → q_lora_rank, or a plain
`q_proj`; `kv_a_proj_with_mqa` → kv_lora_rank + rope dim) and back up per head, so only the
residual side of attention widens: the down projections widen on their input side, the
output projection on its output side, and the low-rank norms, up projections, head counts
and head sizes stay as they are. MLP: the first `first_k_dense_replace` layers are dense
(`intermediate_size`), the rest route over experts of `moe_intermediate_size`, plus
`n_shared_experts` shared experts fused into one MLP of `moe_intermediate_size × n_shared`.
V3's router adds `e_score_correction_bias` [E] to its scores: over experts, never widens."""

from __future__ import annotations

from dataclasses import replace

from .base import OUT, Role, bias, embedding, head, linear, norm
from .blocks import gated_mlp
from .llama import LLAMA, L
from .moe import experts, router

A = L + r"self_attn\."
M = L + r"mlp\."
LOW_RANK = linear("fixed", "fixed")  # latent → heads, or inside the latent: unchanged

ATTENTION_KEYS = ("num_attention_heads", "num_key_value_heads", "head_dim")


def _attention_unchanged(cfg: dict, sizes: dict[str, int]) -> dict:
    """MLA keeps its heads: undo the head counts the generic table would widen."""
    return {k: cfg[k] for k in ATTENTION_KEYS if k in cfg}


DEEPSEEK = replace(
    LLAMA,
    name="deepseek",
    architectures=("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"),
    model_types=("deepseek_v2", "deepseek_v3"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        (A + r"(q_proj|q_a_proj|kv_a_proj_with_mqa)\.weight", linear("fixed", "hidden")),
        (A + r"(q_proj|q_a_proj|kv_a_proj_with_mqa)\.bias", bias("fixed")),
        (A + r"(q_a|kv_a)_layernorm\.weight", norm("fixed")),
        (A + r"(q_b_proj|kv_b_proj)\.weight", LOW_RANK),
        (A + r"(q_b_proj|kv_b_proj)\.bias", bias("fixed")),
        (A + r"o_proj\.weight", linear("hidden", "fixed")),
        (A + r"o_proj\.bias", bias("hidden")),
        *gated_mlp(L),  # dense layers
        *router(M + r"gate\.weight"),
        (M + r"gate\.e_score_correction_bias", Role((("fixed", OUT),))),
        *experts(M + r"experts\.", "(gate|up)_proj", "down_proj", space="expert"),
        (M + r"shared_experts\.(gate|up)_proj\.weight", linear("shared", "hidden")),
        (M + r"shared_experts\.down_proj\.weight", linear("hidden", "shared")),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "ffn": ("intermediate_size",),
        "head_dim": ("v_head_dim",),  # read only so that no hidden/heads split is assumed
        "layers": ("num_hidden_layers",),
    },
    config_quirks=_attention_unchanged,
    ffn_spaces=(
        ("expert", "moe_intermediate_size", None),
        ("shared", "moe_intermediate_size", "n_shared_experts"),
    ),
)
