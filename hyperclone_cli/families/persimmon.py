"""Persimmon (and Fuyu's language model): GPT-NeoX's per-head fused `query_key_value`
(`[q_h k_h v_h]` per head, with bias), LayerNorms on q and k over each head's head_dim
(`qk_layernorm`, shared by all heads), partial rotary, `dense_h_to_4h`/`dense_4h_to_h`,
`final_layernorm`, untied head."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
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
