"""BitNet (unquantized weights): Llama's layout plus RMSNorms inside the sublayers — on the
attention output before o_proj (over heads × head_dim) and on the gated MLP's product before
down_proj (over ffn). The RMS of `[a; a]` is the RMS of `a`, so cloned gains are exact."""

from __future__ import annotations

from dataclasses import replace

from .base import norm
from .llama import LLAMA, L

BITNET = replace(
    LLAMA,
    name="bitnet",
    architectures=("BitNetForCausalLM",),
    model_types=("bitnet",),
    tensors=(
        *LLAMA.tensors,
        (L + r"self_attn\.attn_sub_norm\.weight", norm("q")),
        (L + r"mlp\.ffn_sub_norm\.weight", norm("ffn")),
    ),
)
