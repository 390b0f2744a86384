"""Persimmon (and Fuyu's language model): GPT-NeoX's per-head fused `query_key_value`
(`[q_h k_h v_h]` per head, with bias), LayerNorms on q and k over each head's head_dim
(`qk_layernorm`, shared by all heads), partial rotary, `dense_h_to_4h`/`dense_4h_to_h`,
`final_layernorm`, untied head. Fuyu is Persimmon with a patch embedding (below)."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, embedding, head, linear, norm
from .blocks import fused_attention, mlp
from .llama import LLAMA, L

M = r"model\."

PERSIMMON = replace(
    LLAMA,
    name="persimmon",
    architectures=("PersimmonForCausalLM",),
    model_types=("persimmon",),
    tensors=(
        (M + r"embed_tokens\.weight", embedding()),
        *fused_attention(L + r"self_attn\.", "query_key_value", "dense", space="qkv"),
        (L + r"self_attn\.[qk]_layernorm\.(weight|bias)", norm("head")),
        *mlp(L + r"mlp\.", "dense_h_to_4h", "dense_4h_to_h"),
        (L + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (M + r"final_layernorm\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={k: v for k, v in LLAMA.config_keys.items() if k not in ("kv_heads", "head_dim")},
    tie_keepers=(M + r"final_layernorm\.(weight|bias)",),
    supports_kv_keep=False,
)

# Fuyu: Persimmon as its `language_model` (files: `language_model.model.*`, in memory
# `model.language_model.*`), sizes in `text_config`, and a linear patch embedding
# (`vision_embed_tokens`, patch pixels → hidden) whose output joins the residual stream.
_BODY = r"(language_model\.model\.|model\.language_model\.)"
_HEAD = r"(language_model\.)?lm_head\.weight"


def _fuyu(pattern: str) -> str:
    return _HEAD if pattern == r"lm_head\.weight" else _BODY + pattern.removeprefix(M)


FUYU = replace(
    PERSIMMON,
    name="fuyu",
    architectures=("FuyuForCausalLM",),
    model_types=("fuyu",),
    tensors=(
        *((_fuyu(p), role) for p, role in PERSIMMON.tensors),
        (r"(model\.)?vision_embed_tokens\.weight", linear("hidden", "fixed")),
        (r"(model\.)?vision_embed_tokens\.bias", bias("hidden")),
    ),
    embedding_name=_fuyu(PERSIMMON.embedding_name),
    tie_keepers=tuple(_fuyu(p) for p in PERSIMMON.tie_keepers),
    ignored=tuple(_fuyu(p) for p in PERSIMMON.ignored),
    head_name="language_model.lm_head.weight",
    config_path="text_config",
)
