"""GPT-2: `Conv1D` layers store weights transposed, (in, out); `c_attn` is `[q | k | v]`
along its output side; learned positions; tied head; LayerNorm with bias. Hub files name
tensors without the `transformer.` prefix (`h.0.attn.c_attn.weight`, `wte.weight`), files
saved by recent transformers with it; both are read and written back as found. Old files
also carry the causal-mask buffers `attn.bias` / `attn.masked_bias`."""

from __future__ import annotations

from .base import Dims, Family, bias, cfg_int, conv1d, embedding, head, norm, widen

P = r"(transformer\.)?"
H = P + r"h\.\d+\."
QKV = ("q", "kv", "kv")


def gpt2_dims(cfg: dict) -> Dims:
    hidden = cfg_int(cfg, "n_embd", "hidden_size")
    heads = cfg_int(cfg, "n_head", "num_attention_heads")
    if hidden % heads:
        from ..errors import HypercloneError

        raise HypercloneError(f"config.json: n_embd {hidden} is not divisible by n_head {heads}")
    return Dims(
        hidden=hidden,
        ffn=cfg_int(cfg, "n_inner", default=4 * hidden),
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        embed=hidden,
        layers=cfg_int(cfg, "n_layer", "num_hidden_layers"),
        rotary=False,
    )


def gpt2_config(cfg: dict, dims: Dims, sizes: dict[str, int]) -> dict:
    updates = widen(cfg, sizes, {"n_embd": "hidden", "n_head": "heads"})
    # n_inner: None means 4·n_embd; write it whenever that would be wrong
    if cfg.get("n_inner") is not None or sizes["ffn"] != 4 * sizes["hidden"]:
        updates["n_inner"] = sizes["ffn"]
    return updates


GPT2 = Family(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    model_types=("gpt2",),
    tensors=(
        (P + r"wte\.weight", embedding()),
        (P + r"wpe\.weight", embedding()),
        (H + r"attn\.c_attn\.weight", conv1d("hidden", QKV, q_scaled=True)),
        (H + r"attn\.c_attn\.bias", bias(QKV, q_scaled=True)),
        (H + r"attn\.c_proj\.weight", conv1d("q", "hidden")),
        (H + r"attn\.c_proj\.bias", bias("hidden")),
        (H + r"mlp\.c_fc\.weight", conv1d("hidden", "ffn")),
        (H + r"mlp\.c_fc\.bias", bias("ffn")),
        (H + r"mlp\.c_proj\.weight", conv1d("ffn", "hidden")),
        (H + r"mlp\.c_proj\.bias", bias("hidden")),
        (H + r"ln_[12]\.(weight|bias)", norm()),
        (P + r"ln_f\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    ),
    dims=gpt2_dims,
    config_keys=gpt2_config,
    embedding_name=P + r"wte\.weight",
    tie_keepers=(P + r"ln_f\.(weight|bias)",),
    ignored=(H + r"attn\.(bias|masked_bias)",),
    default_tie=True,
    supports_kv_keep=False,  # c_attn splits into three equal parts
)
