"""GPT-BigCode (StarCoder, SantaCoder): GPT-2's block with nn.Linear (not Conv1D). With
`multi_query` (the default) `c_attn` is `[q | k | v]` with one k/v head, which the model
cannot replicate, so k/v are kept; without it, `c_attn` is per head `[q_h k_h v_h]`.
`scale_attn_weights: false` drops the 1/√head_dim softmax scale."""

from __future__ import annotations

from dataclasses import replace

from .base import Family, embedding, head, norm
from .blocks import fused_attention, mlp

T = r"transformer\."
H = T + r"h\.\d+\."


def _tensors(space) -> tuple:
    return (
        (T + r"w[tp]e\.weight", embedding()),
        *fused_attention(H + r"attn\.", "c_attn", "c_proj", space=space),
        *mlp(H + r"mlp\.", "c_fc", "c_proj"),
        (H + r"ln_[12]\.(weight|bias)", norm()),
        (T + r"ln_f\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    )


def _variant(cfg: dict) -> Family:
    return GPT_BIGCODE if cfg.get("multi_query", True) else GPT_BIGCODE_MHA


GPT_BIGCODE = Family(
    name="gpt_bigcode",
    layer_index=T + r"h\.(?P<layer>\d+)\.",
    architectures=("GPTBigCodeForCausalLM",),
    model_types=("gpt_bigcode",),
    tensors=_tensors(("q", "kv", "kv")),
    config_keys={
        "hidden": ("n_embd",),
        "heads": ("n_head",),
        "ffn": ("n_inner",),
        "layers": ("n_layer",),
    },
    ffn_per_hidden=4,
    rotary=False,
    embedding_name=T + r"wte\.weight",
    tie_keepers=(T + r"ln_f\.(weight|bias)",),
    ignored=(H + r"attn\.(bias|masked_bias)",),
    default_tie=True,
    mqa=lambda cfg: cfg.get("multi_query", True),
    unscaled=lambda cfg: not cfg.get("scale_attn_weights", True),
    variant=_variant,
)

GPT_BIGCODE_MHA = replace(GPT_BIGCODE, tensors=_tensors("qkv"), supports_kv_keep=False)
