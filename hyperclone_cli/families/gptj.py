"""GPT-J and CodeGen: one LayerNorm feeding attention and MLP in parallel, rotary on the
first `rotary_dim` dims of each head (pairs interleaved, which heads never mix), `fc_in` /
`fc_out` MLP, untied head with a bias. GPT-J has separate q/k/v; CodeGen fuses them in
`qkv_proj`, laid out as 4 model-parallel blocks `[q_j | v_j | k_j]` (space "qvk4")."""

from __future__ import annotations

from dataclasses import replace

from .base import Family, bias, embedding, head, linear, norm
from .blocks import fused_attention, mlp, output

T = r"transformer\."
H = T + r"h\.\d+\."

_COMMON = (
    (T + r"wte\.weight", embedding()),
    *mlp(H + r"mlp\.", "fc_in", "fc_out"),
    (H + r"ln_1\.(weight|bias)", norm()),
    (T + r"ln_f\.(weight|bias)", norm()),
    (r"lm_head\.weight", head()),
    (r"lm_head\.bias", bias("fixed")),
)

GPTJ = Family(
    name="gptj",
    layer_index=T + r"h\.(?P<layer>\d+)\.",
    architectures=("GPTJForCausalLM",),
    model_types=("gptj",),
    tensors=(
        (H + r"attn\.q_proj\.weight", linear("q", "hidden", q_scaled=True)),
        (H + r"attn\.[kv]_proj\.weight", linear("kv", "hidden")),
        *output(H + r"attn\.out_proj"),
        *_COMMON,
    ),
    config_keys={
        "hidden": ("n_embd",),
        "heads": ("n_head",),
        "ffn": ("n_inner",),
        "layers": ("n_layer",),
    },
    ffn_per_hidden=4,  # n_inner: null means 4·n_embd
    rotary=True,
    embedding_name=T + r"wte\.weight",
    tie_keepers=(T + r"ln_f\.(weight|bias)",),
    ignored=(H + r"attn\.(bias|masked_bias)", H + r"attn\.rotary_emb\.\w+"),
    supports_kv_keep=False,
)

CODEGEN = replace(
    GPTJ,
    name="codegen",
    architectures=("CodeGenForCausalLM",),
    model_types=("codegen",),
    tensors=(*fused_attention(H + r"attn\.", "qkv_proj", "out_proj", space="qvk4"), *_COMMON),
)
