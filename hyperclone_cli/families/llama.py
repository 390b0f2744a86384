"""Llama tensor layout: separate q/k/v/o projections (optional biases), gated MLP, RMSNorm,
rotary positions. Any checkpoint with this layout works (Mistral, SmolLM, TinyLlama…);
Qwen2, Qwen3, OLMo, Gemma and Phi-3 are this family with their differences replaced."""

from __future__ import annotations

from .base import Family, embedding, head, norm
from .blocks import attention, gated_mlp

L = r"model\.layers\.\d+\."

LLAMA = Family(
    name="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    model_types=("llama", "mistral"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *gated_mlp(L),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "kv_heads": ("num_key_value_heads",),
        "ffn": ("intermediate_size",),
        "head_dim": ("head_dim",),
        "layers": ("num_hidden_layers",),
    },
    rotary=True,
    embedding_name=r"model\.embed_tokens\.weight",
    tie_keepers=(r"model\.norm\.weight",),
    layer_index=r"model\.layers\.(?P<layer>\d+)\.",
    ignored=(L + r"self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq"),
)
