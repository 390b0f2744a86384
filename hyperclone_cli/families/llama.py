"""Llama tensor layout: separate q/k/v/o projections (optional biases), gated MLP, RMSNorm,
rotary positions. Any checkpoint with this layout works (Mistral, SmolLM, TinyLlama…);
Qwen2 is the same layout under its own name. The pieces are shared with OLMo and Gemma."""

from __future__ import annotations

from dataclasses import replace

from .base import Dims, Family, Role, bias, cfg_int, embedding, head, head_dims, linear, norm, widen

L = r"model\.layers\.\d+\."


def attention(prefix: str = L) -> tuple[tuple[str, Role], ...]:
    """q/k/v/o projections with optional biases; q is scaled under head-dim attention."""
    a = prefix + r"self_attn\."
    return (
        (a + r"q_proj\.weight", linear("q", "hidden", q_scaled=True)),
        (a + r"q_proj\.bias", bias("q", q_scaled=True)),
        (a + r"[kv]_proj\.weight", linear("kv", "hidden")),
        (a + r"[kv]_proj\.bias", bias("kv")),
        (a + r"o_proj\.weight", linear("hidden", "q")),
        (a + r"o_proj\.bias", bias("hidden")),
    )


def gated_mlp(prefix: str = L) -> tuple[tuple[str, Role], ...]:
    m = prefix + r"mlp\."
    return (
        (m + r"(gate|up)_proj\.weight", linear("ffn", "hidden")),
        (m + r"(gate|up)_proj\.bias", bias("ffn")),
        (m + r"down_proj\.weight", linear("hidden", "ffn")),
        (m + r"down_proj\.bias", bias("hidden")),
    )


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
    architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    model_types=("llama", "mistral"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(),
        *gated_mlp(),
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

# Qwen2: Llama's layout with q/k/v biases, GQA, tied embeddings in the small sizes.
QWEN2 = replace(LLAMA, name="qwen2", architectures=("Qwen2ForCausalLM",), model_types=("qwen2",))

# Qwen3: RMSNorms on q and k over each head's head_dim, which heads never widen.
QWEN3 = replace(
    LLAMA,
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    model_types=("qwen3",),
    tensors=(*LLAMA.tensors, (L + r"self_attn\.[qk]_norm\.weight", norm("head"))),
)
