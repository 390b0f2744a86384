"""Multi-head latent attention (DeepSeek-V2 style), in the dense Youtu and MiniCPM3. Hidden
widens into fixed-width latents (`q_a_proj`, `kv_a_proj_with_mqa`: input side only; their
RMSNorms never widen); the up-projections `q_b_proj` and `kv_b_proj` make per-head rows
(`[q_nope | q_rope]`, `[k_nope | v]`) whose heads are copied; the rotary key part is one
shared head, and the softmax scale comes from the per-head width, both unchanged.
MiniCPM3 also multiplies the embedding (`scale_emb`) and each residual branch
(`scale_depth / √layers`) by constants, and divides the final hidden state by
`hidden_size / dim_model_base`: `dim_model_base` widens with the hidden size to keep it."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, fixed, linear
from .llama import LLAMA, L

A = L + r"self_attn\."

MLA_ATTENTION = (
    (A + r"q_proj\.weight", linear("q_head_blocks", "hidden")),
    (A + r"(q_a_proj|kv_a_proj_with_mqa)\.weight", linear("fixed", "hidden")),
    (A + r"(q_a_proj|kv_a_proj_with_mqa)\.bias", bias("fixed")),
    (A + r"(q_a|kv_a)_layernorm\.weight", fixed(1)),
    (A + r"(q_b_proj|kv_b_proj)\.weight", linear("q_head_blocks", "fixed")),
    (A + r"o_proj\.weight", linear("hidden", "q_head_blocks", writes_residual=True)),
    (A + r"o_proj\.bias", bias("hidden", writes_residual=True)),
)
NOT_ATTENTION = tuple(row for row in LLAMA.tensors if "self_attn" not in row[0])

YOUTU = replace(
    LLAMA,
    name="youtu",
    architectures=("YoutuForCausalLM",),
    model_types=("youtu",),
    tensors=(*MLA_ATTENTION, *NOT_ATTENTION),
    default_tie=True,
    supports_kv_keep=False,  # every head has its own k and v (from kv_b_proj)
)


def _dim_model_base(cfg: dict, sizes: dict[str, int]) -> dict:
    if cfg.get("dim_model_base") is None:  # None means hidden_size: the ratio stays 1
        return {}
    return {"dim_model_base": cfg["dim_model_base"] * sizes["hidden"] // cfg["hidden_size"]}


MINICPM3 = replace(
    YOUTU,
    name="minicpm3",
    architectures=("MiniCPM3ForCausalLM",),
    model_types=("minicpm3",),
    config_quirks=_dim_model_base,
    # its config always has scale_depth (the class default): depth.py names it as the reason
    depth_refusal=lambda cfg: "its residual branches are scaled by scale_depth / √layers",
)
