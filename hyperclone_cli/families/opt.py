"""OPT: learned positions (offset 2, stored as a plain table), pre- or post-LayerNorm, tied
head, and in some sizes (350m) `project_in`/`project_out` between a narrower embedding and
the decoder. Real checkpoints name tensors `decoder.*` or `model.decoder.*`."""

from __future__ import annotations

from .base import Dims, Family, bias, cfg_int, embedding, head, head_dims, linear, norm, widen

D = r"(model\.)?decoder\."
L = D + r"layers\.\d+\."


def opt_dims(cfg: dict) -> Dims:
    hidden = cfg_int(cfg, "hidden_size")
    heads = cfg_int(cfg, "num_attention_heads")
    return Dims(
        hidden=hidden,
        ffn=cfg_int(cfg, "ffn_dim"),
        heads=heads,
        kv_heads=heads,
        head_dim=head_dims({}, hidden, heads),  # OPT always derives it
        embed=cfg_int(cfg, "word_embed_proj_dim", default=hidden),
        layers=cfg_int(cfg, "num_hidden_layers"),
        rotary=False,
    )


def opt_config(cfg: dict, dims: Dims, sizes: dict[str, int]) -> dict:
    return widen(
        cfg,
        sizes,
        {
            "hidden_size": "hidden",
            "ffn_dim": "ffn",
            "num_attention_heads": "heads",
            "word_embed_proj_dim": "embed",
        },
    )


OPT = Family(
    name="opt",
    architectures=("OPTForCausalLM",),
    model_types=("opt",),
    tensors=(
        (D + r"embed_tokens\.weight", embedding("embed")),
        (D + r"embed_positions\.weight", embedding("hidden")),
        (D + r"project_in\.weight", linear("hidden", "embed")),
        (D + r"project_out\.weight", linear("embed", "hidden")),
        (D + r"final_layer_norm\.(weight|bias)", norm()),
        (L + r"self_attn\.q_proj\.weight", linear("q", "hidden", q_scaled=True)),
        (L + r"self_attn\.q_proj\.bias", bias("q", q_scaled=True)),
        (L + r"self_attn\.[kv]_proj\.weight", linear("kv", "hidden")),
        (L + r"self_attn\.[kv]_proj\.bias", bias("kv")),
        (L + r"self_attn\.out_proj\.weight", linear("hidden", "q")),
        (L + r"self_attn\.out_proj\.bias", bias("hidden")),
        (L + r"fc1\.weight", linear("ffn", "hidden")),
        (L + r"fc1\.bias", bias("ffn")),
        (L + r"fc2\.weight", linear("hidden", "ffn")),
        (L + r"fc2\.bias", bias("hidden")),
        (L + r"(self_attn_layer_norm|final_layer_norm)\.(weight|bias)", norm()),
        (r"lm_head\.weight", head("embed")),
    ),
    dims=opt_dims,
    config_keys=opt_config,
    embedding_name=D + r"embed_tokens\.weight",
    # The tied head reads the output of the final norm, or of project_out when there is one
    # after it (350m has project_out and no final norm).
    tie_keepers=(D + r"project_out\.weight", D + r"final_layer_norm\.(weight|bias)"),
    default_tie=True,
    supports_kv_keep=False,  # no grouped-query attention: k/v have as many heads as q
)
