"""Llama tensor layout: separate q/k/v/o projections (optional biases), gated MLP, RMSNorm,
rotary positions. Any checkpoint with this layout works (Mistral, Qwen2, SmolLM, TinyLlama…)."""

from __future__ import annotations

from .base import Dims, Family, bias, cfg_int, embedding, head, head_dims, linear, norm, widen

L = r"model\.layers\.\d+\."


def llama_dims(cfg: dict) -> Dims:
    hidden = cfg_int(cfg, "hidden_size")
    heads = cfg_int(cfg, "num_attention_heads")
    kv = cfg_int(cfg, "num_key_value_heads", default=heads)
    if heads % kv:
        from ..errors import HypercloneError

        raise HypercloneError(
            f"config.json: {heads} attention heads are not a multiple of {kv} key/value heads"
        )
    return Dims(
        hidden=hidden,
        ffn=cfg_int(cfg, "intermediate_size"),
        heads=heads,
        kv_heads=kv,
        head_dim=head_dims(cfg, hidden, heads),
        embed=hidden,
        layers=cfg_int(cfg, "num_hidden_layers"),
        rotary=True,
    )


def llama_config(cfg: dict, dims: Dims, sizes: dict[str, int]) -> dict:
    updates = widen(
        cfg,
        sizes,
        {
            "hidden_size": "hidden",
            "intermediate_size": "ffn",
            "num_attention_heads": "heads",
            "num_key_value_heads": "kv_heads",
        },
    )
    # head_dim must be explicit once hidden / heads no longer equals it
    if "head_dim" in cfg or sizes["hidden"] // sizes["heads"] != sizes["head_dim"]:
        updates["head_dim"] = sizes["head_dim"]
    return updates


LLAMA = Family(
    name="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
    model_types=("llama", "mistral", "qwen2"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        (L + r"self_attn\.q_proj\.weight", linear("q", "hidden", q_scaled=True)),
        (L + r"self_attn\.q_proj\.bias", bias("q", q_scaled=True)),
        (L + r"self_attn\.[kv]_proj\.weight", linear("kv", "hidden")),
        (L + r"self_attn\.[kv]_proj\.bias", bias("kv")),
        (L + r"self_attn\.o_proj\.weight", linear("hidden", "q")),
        (L + r"self_attn\.o_proj\.bias", bias("hidden")),
        (L + r"mlp\.(gate|up)_proj\.weight", linear("ffn", "hidden")),
        (L + r"mlp\.(gate|up)_proj\.bias", bias("ffn")),
        (L + r"mlp\.down_proj\.weight", linear("hidden", "ffn")),
        (L + r"mlp\.down_proj\.bias", bias("hidden")),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
    dims=llama_dims,
    config_keys=llama_config,
    embedding_name=r"model\.embed_tokens\.weight",
    tie_keepers=(r"model\.norm\.weight",),
    ignored=(L + r"self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq"),
)
