"""GPT-Neo: GPT-2's block with separate q/k/v (no biases) and `out_proj` under
`attn.attention.`, plain Linear MLP `c_fc`/`c_proj`, learned positions, alternating
global/local (windowed) layers, tied head. Attention scores are *not* divided by
√head_dim, so head-dim attention scales q by 1/n (q·k grows n-fold, nothing shrinks)."""

from __future__ import annotations

from .base import Family, bias, embedding, head, linear, norm
from .blocks import mlp, output

T = r"transformer\."
H = T + r"h\.\d+\."
A = H + r"attn\.attention\."

GPT_NEO = Family(
    name="gpt_neo",
    layer_index=T + r"h\.(?P<layer>\d+)\.",
    architectures=("GPTNeoForCausalLM",),
    model_types=("gpt_neo",),
    tensors=(
        (T + r"w[tp]e\.weight", embedding()),
        (A + r"q_proj\.weight", linear("q", "hidden", q_scaled=True)),
        (A + r"[kv]_proj\.weight", linear("kv", "hidden")),
        *output(A + "out_proj"),
        *mlp(H + r"mlp\.", "c_fc", "c_proj"),
        (H + r"ln_[12]\.(weight|bias)", norm()),
        (T + r"ln_f\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
        (r"lm_head\.bias", bias("fixed")),
    ),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_heads",),
        "ffn": ("intermediate_size",),
        "layers": ("num_layers",),
    },
    ffn_per_hidden=4,  # intermediate_size: null means 4·hidden_size
    rotary=False,
    embedding_name=T + r"wte\.weight",
    tie_keepers=(T + r"ln_f\.(weight|bias)",),
    ignored=(H + r"attn\.attention\.(bias|masked_bias)",),
    default_tie=True,
    supports_kv_keep=False,
    unscaled=lambda cfg: True,
)
