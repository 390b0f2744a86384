"""Falcon. The fused `query_key_value` layout follows the config:
- `new_decoder_architecture` (40B, 180B): per k/v group `[q_g,0 … q_g,r-1  k_g  v_g]`
  (space "qkv" with GQA), with one (`input_layernorm`) or two (`ln_attn`, `ln_mlp`) norms;
- `multi_query` (7B): `[q | k | v]` with one k/v head the model cannot replicate (kept);
- neither: per head `[q_h k_h v_h]`.
Parallel or sequential residual, rotary positions, `dense_h_to_4h`/`dense_4h_to_h`
(`ffn_hidden_size`, default 4·hidden), optional biases, tied head by default. With
`alibi`, Falcon adds the bias *before* dividing by √head_dim, so neither attention strategy
keeps the scores: refused."""

from __future__ import annotations

from dataclasses import replace

from .base import Family, embedding, head, norm
from .blocks import fused_attention, mlp

T = r"transformer\."
H = T + r"h\.\d+\."


def _tensors(space) -> tuple:
    return (
        (T + r"word_embeddings\.weight", embedding()),
        *fused_attention(H + r"self_attention\.", "query_key_value", "dense", space=space),
        *mlp(H + r"mlp\.", "dense_h_to_4h", "dense_4h_to_h"),
        (H + r"(input_layernorm|post_attention_layernorm|ln_attn|ln_mlp)\.(weight|bias)", norm()),
        (T + r"ln_f\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    )


def _multi_query(cfg: dict) -> bool:
    return not cfg.get("new_decoder_architecture") and cfg.get("multi_query", True)


def _variant(cfg: dict) -> Family:
    if cfg.get("new_decoder_architecture"):
        return FALCON_GQA
    return FALCON if _multi_query(cfg) else FALCON_MHA


def _refuse(cfg: dict) -> str | None:
    if cfg.get("alibi"):
        return (
            "ALiBi slopes depend on the number of heads, and Falcon scales the ALiBi bias "
            "by 1/√head_dim, so neither head replication nor head-dim attention keeps it"
        )
    return None


FALCON = Family(
    name="falcon",
    layer_index=T + r"h\.(?P<layer>\d+)\.",
    architectures=("FalconForCausalLM",),
    model_types=("falcon",),
    tensors=_tensors(("q", "kv", "kv")),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "kv_heads": ("num_kv_heads",),
        "ffn": ("ffn_hidden_size",),
        "layers": ("num_hidden_layers",),
    },
    ffn_per_hidden=4,
    rotary=True,
    embedding_name=T + r"word_embeddings\.weight",
    tie_keepers=(T + r"ln_f\.(weight|bias)",),
    default_tie=True,
    mqa=_multi_query,
    refuse=_refuse,
    variant=_variant,
)

FALCON_GQA = replace(FALCON, tensors=_tensors("qkv"))
# old layout without multi_query: per head [q_h k_h v_h], num_kv_heads = heads; the
# split reads three parts per head, so k/v cannot be kept apart from their heads
FALCON_MHA = replace(FALCON_GQA, supports_kv_keep=False)
