"""GPT-NeoX / Pythia: fused `query_key_value` laid out per head (`[q_h k_h v_h]` for each
head h, then viewed as (heads, 3·hd) and chunked), so whole heads tile like any head-major
projection; parallel residual; partial rotary (`rotary_pct`); LayerNorm with bias; untied
head. Pythia files name the head `embed_out.weight` (transformers renames it `lm_head` in
memory and back on save); both names are read, and an untied head is written as
`embed_out.weight`, as real checkpoints have it. Old files carry mask and rotary buffers."""

from __future__ import annotations

from .base import Family, embedding, head, norm
from .blocks import fused_attention, mlp

G = r"gpt_neox\."
L = G + r"layers\.\d+\."

GPT_NEOX = Family(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    model_types=("gpt_neox",),
    tensors=(
        (G + r"embed_in\.weight", embedding()),
        *fused_attention(L + r"attention\.", "query_key_value", "dense", space="qkv"),
        *mlp(L + r"mlp\.", "dense_h_to_4h", "dense_4h_to_h"),
        (L + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (G + r"final_layer_norm\.(weight|bias)", norm()),
        (r"(embed_out|lm_head)\.weight", head()),
    ),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "ffn": ("intermediate_size",),
        "layers": ("num_hidden_layers",),
    },
    ffn_per_hidden=4,
    # transformers' own default for a missing intermediate_size is 24576, not 4·hidden
    config_quirks=lambda cfg, sizes: {"intermediate_size": sizes["ffn"]},
    rotary=True,
    embedding_name=G + r"embed_in\.weight",
    head_name="embed_out.weight",
    tie_keepers=(G + r"final_layer_norm\.(weight|bias)",),
    layer_index=G + r"layers\.(?P<layer>\d+)\.",
    ignored=(L + r"attention\.(bias|masked_bias|rotary_emb\.inv_freq)",),
    supports_kv_keep=False,  # query_key_value holds as many k/v heads as q heads
)
