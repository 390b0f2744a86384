"""GPT-NeoX / Pythia: fused `query_key_value` laid out per head (`[q_h k_h v_h]` for each
head h, then viewed as (heads, 3·hd) and chunked), so whole heads tile like any head-major
projection; parallel residual; partial rotary (`rotary_pct`); LayerNorm with bias; untied
head. Pythia files name the head `embed_out.weight` (transformers renames it `lm_head` in
memory and back on save); both names are read, and an untied head is written as
`embed_out.weight`, as real checkpoints have it. Old files carry mask and rotary buffers."""

from __future__ import annotations

from .base import Dims, Family, bias, cfg_int, embedding, head, head_dims, linear, norm, widen

G = r"gpt_neox\."
L = G + r"layers\.\d+\."


def neox_dims(cfg: dict) -> Dims:
    hidden = cfg_int(cfg, "hidden_size")
    heads = cfg_int(cfg, "num_attention_heads")
    return Dims(
        hidden=hidden,
        ffn=cfg_int(cfg, "intermediate_size", default=4 * hidden),
        heads=heads,
        kv_heads=heads,
        head_dim=head_dims({}, hidden, heads),  # always hidden // heads
        embed=hidden,
        layers=cfg_int(cfg, "num_hidden_layers"),
        rotary=True,
    )


def neox_config(cfg: dict, dims: Dims, sizes: dict[str, int]) -> dict:
    updates = widen(
        cfg,
        sizes,
        {"hidden_size": "hidden", "intermediate_size": "ffn", "num_attention_heads": "heads"},
    )
    if "intermediate_size" not in cfg:
        updates["intermediate_size"] = sizes["ffn"]
    return updates


GPT_NEOX = Family(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    model_types=("gpt_neox",),
    tensors=(
        (G + r"embed_in\.weight", embedding()),
        (L + r"attention\.query_key_value\.weight", linear("qkv", "hidden")),
        (L + r"attention\.query_key_value\.bias", bias("qkv")),
        (L + r"attention\.dense\.weight", linear("hidden", "q")),
        (L + r"attention\.dense\.bias", bias("hidden")),
        (L + r"mlp\.dense_h_to_4h\.weight", linear("ffn", "hidden")),
        (L + r"mlp\.dense_h_to_4h\.bias", bias("ffn")),
        (L + r"mlp\.dense_4h_to_h\.weight", linear("hidden", "ffn")),
        (L + r"mlp\.dense_4h_to_h\.bias", bias("hidden")),
        (L + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (G + r"final_layer_norm\.(weight|bias)", norm()),
        (r"(embed_out|lm_head)\.weight", head()),
    ),
    dims=neox_dims,
    config_keys=neox_config,
    embedding_name=G + r"embed_in\.weight",
    head_name="embed_out.weight",
    tie_keepers=(G + r"final_layer_norm\.(weight|bias)",),
    ignored=(L + r"attention\.(bias|masked_bias|rotary_emb\.inv_freq)",),
    supports_kv_keep=False,  # query_key_value holds as many k/v heads as q heads
)
