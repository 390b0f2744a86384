"""GPT-NeoX-Japanese: GPT-NeoX's per-head `query_key_value` (no bias), an output `dense`
without bias plus a separate `dense_bias` in the last layer only, sequential residual,
partial rotary, MLP `intermediate_multiple_size`·hidden wide (no biases), head
`embed_out` tied by default."""

from __future__ import annotations

from dataclasses import replace

from ..errors import HypercloneError
from .base import Family, bias, embedding, head, norm
from .blocks import fused_attention, mlp

G = r"gpt_neox_japanese\."
L = G + r"layers\.\d+\."


def _variant(cfg: dict) -> Family:
    ratio = cfg.get("intermediate_multiple_size", 4)
    return replace(GPT_NEOX_JAPANESE, ffn_per_hidden=ratio)


def _ffn_ratio(cfg: dict, sizes: dict[str, int]) -> dict:
    if sizes["ffn"] % sizes["hidden"]:
        raise HypercloneError(
            "GPT-NeoX-Japanese sets its MLP width as a whole multiple of hidden_size "
            "(intermediate_multiple_size): --ffn-factor must keep that a whole number"
        )
    return {"intermediate_multiple_size": sizes["ffn"] // sizes["hidden"]}


GPT_NEOX_JAPANESE = Family(
    name="gpt_neox_japanese",
    layer_index=G + r"layers\.(?P<layer>\d+)\.",
    architectures=("GPTNeoXJapaneseForCausalLM",),
    model_types=("gpt_neox_japanese",),
    tensors=(
        (G + r"embed_in\.weight", embedding()),
        *fused_attention(L + r"attention\.", "query_key_value", "dense", space="qkv"),
        (L + r"attention\.dense_bias", bias("hidden")),
        *mlp(L + r"mlp\.", "dense_h_to_4h", "dense_4h_to_h"),
        (L + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (G + r"final_layer_norm\.(weight|bias)", norm()),
        (r"(embed_out|lm_head)\.weight", head()),
    ),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "ffn": (),
        "layers": ("num_hidden_layers",),
    },
    ffn_per_hidden=4,
    config_quirks=_ffn_ratio,
    rotary=True,
    embedding_name=G + r"embed_in\.weight",
    head_name="embed_out.weight",
    tie_keepers=(G + r"final_layer_norm\.(weight|bias)",),
    default_tie=True,
    supports_kv_keep=False,
    variant=_variant,
)
