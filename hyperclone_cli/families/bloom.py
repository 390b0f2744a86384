"""BLOOM: ALiBi positions, per-head fused `query_key_value` (`[q_h k_h v_h]`), a LayerNorm
right after the word embedding, `dense_h_to_4h`/`dense_4h_to_h` (always 4·hidden), tied
head. Hub files store the base model's names (`h.0.…`, `word_embeddings.weight`); they are
written back as found.

ALiBi slopes are a function of the head count and each head's index, so replicated heads
would get other slopes: the heads are kept and grown (head-dim attention). The bias is
added to q·k/√head_dim unscaled, so q scaled by 1/√n keeps every score."""

from __future__ import annotations

from .base import Family, embedding, fixed_ffn, head, norm
from .blocks import fused_attention, mlp

T = r"(transformer\.)?"  # hub files (bigscience/bloom-560m) name tensors without it
H = T + r"h\.\d+\."
ALIBI = "ALiBi slopes depend on the number of heads"

BLOOM = Family(
    name="bloom",
    depth_refusal=lambda cfg: (
        "apply_residual_connection_post_layernorm puts the normalised input on the "
        "residual stream, so a zeroed block is not the identity"
        if cfg.get("apply_residual_connection_post_layernorm")
        else None
    ),
    layer_index=T + r"h\.(?P<layer>\d+)\.",
    architectures=("BloomForCausalLM",),
    model_types=("bloom",),
    tensors=(
        (T + r"word_embeddings\.weight", embedding()),
        (T + r"word_embeddings_layernorm\.(weight|bias)", norm()),
        *fused_attention(H + r"self_attention\.", "query_key_value", "dense", space="qkv"),
        *mlp(H + r"mlp\.", "dense_h_to_4h", "dense_4h_to_h"),
        (H + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (T + r"ln_f\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={
        "hidden": ("hidden_size", "n_embed"),
        "heads": ("n_head", "num_attention_heads"),
        "ffn": (),
        "layers": ("n_layer", "num_hidden_layers"),
    },
    ffn_per_hidden=4,
    config_quirks=fixed_ffn(4, "BLOOM"),
    rotary=False,
    embedding_name=T + r"word_embeddings\.weight",
    tie_keepers=(T + r"ln_f\.(weight|bias)",),
    default_tie=True,
    supports_kv_keep=False,
    alibi=lambda cfg: ALIBI,
)
