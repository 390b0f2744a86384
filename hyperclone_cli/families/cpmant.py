"""CPM-Ant: RMS-style LayerNorms (weight only), q/k/v of `dim_head` per head (not
hidden/heads), `attention_out`, gated FFN `w_in.w_0` (gate) / `w_in.w_1` / `w_out`, a
segment embedding added to the token embedding, and a relative position bias with one
column per head (space "heads": it follows the heads as they are copied or grown). The
head `lm_head` is never tied (the input embedding also holds prompt rows)."""

from __future__ import annotations

from .base import OUT, Family, Role, embedding, head, linear, norm
from .blocks import mlp

C = r"cpmant\."
L = C + r"encoder\.layers\.\d+\."
A = L + r"self_att\.self_attention\."

CPMANT = Family(
    name="cpmant",
    layer_index=C + r"encoder\.layers\.(?P<layer>\d+)\.",
    architectures=("CpmAntForCausalLM",),
    model_types=("cpmant",),
    tensors=(
        (C + r"(input|segment)_embedding\.weight", embedding()),
        (C + r"position_bias\.relative_attention_bias", Role((("fixed", OUT), ("heads", OUT)))),
        (A + r"project_q\.weight", linear("q", "hidden", q_scaled=True)),
        (A + r"project_[kv]\.weight", linear("kv", "hidden")),
        (A + r"attention_out\.weight", linear("hidden", "q")),
        *mlp(L + r"ffn\.ffn\.", r"w_in\.w_[01]", "w_out"),
        (L + r"(self_att\.layernorm_before_attention|ffn\.layernorm_before_ffn)\.weight", norm()),
        (C + r"encoder\.output_layernorm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "ffn": ("dim_ff",),
        "head_dim": ("dim_head",),
        "layers": ("num_hidden_layers",),
    },
    rotary=False,
    embedding_name=C + r"input_embedding\.weight",
    ties=False,  # tie_word_embeddings: true in its config, but the head is its own tensor
    supports_kv_keep=False,
)
