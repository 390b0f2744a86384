"""GPT-2: `Conv1D` layers store weights transposed, (in, out); `c_attn` is `[q | k | v]`
along its output side; learned positions; tied head; LayerNorm with bias. Hub files name
tensors without the `transformer.` prefix (`h.0.attn.c_attn.weight`, `wte.weight`), files
saved by recent transformers with it; both are read and written back as found. Old files
also carry the causal-mask buffers `attn.bias` / `attn.masked_bias`."""

from __future__ import annotations

from .base import Family, embedding, head, norm
from .blocks import fused_attention, mlp

P = r"(transformer\.)?"
H = P + r"h\.\d+\."

GPT2 = Family(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    model_types=("gpt2",),
    tensors=(
        (P + r"wte\.weight", embedding()),
        (P + r"wpe\.weight", embedding()),
        *fused_attention(H + r"attn\.", "c_attn", "c_proj", transposed=True),
        *mlp(H + r"mlp\.", "c_fc", "c_proj", transposed=True),
        (H + r"ln_[12]\.(weight|bias)", norm()),
        (P + r"ln_f\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={
        "hidden": ("n_embd", "hidden_size"),
        "heads": ("n_head", "num_attention_heads"),
        "ffn": ("n_inner",),
        "layers": ("n_layer", "num_hidden_layers"),
    },
    ffn_per_hidden=4,  # n_inner: null means 4·n_embd
    rotary=False,
    embedding_name=P + r"wte\.weight",
    tie_keepers=(P + r"ln_f\.(weight|bias)",),
    layer_index=P + r"h\.(?P<layer>\d+)\.",
    ignored=(H + r"attn\.(bias|masked_bias)",),
    default_tie=True,
    supports_kv_keep=False,  # c_attn splits into three equal parts
)
