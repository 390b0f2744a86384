"""Nemotron: Llama's projections, a relu² MLP without gate, partial rotary, and LayerNorm1P:
a LayerNorm with bias whose gain is stored as `w` and applied as `(1 + w)`. A tie is kept by
scaling the final norm's gain `(1 + w)` and its bias by 1/n."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, embedding, head, norm
from .blocks import attention, mlp
from .llama import LLAMA, L

NEMOTRON = replace(
    LLAMA,
    name="nemotron",
    architectures=("NemotronForCausalLM",),
    model_types=("nemotron",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *mlp(L + r"mlp\.", "up_proj", "down_proj"),
        (L + r"(input|post_attention)_layernorm\.weight", norm(offset=1.0)),
        (L + r"(input|post_attention)_layernorm\.bias", bias("hidden")),
        (r"model\.norm\.weight", norm(offset=1.0)),
        (r"model\.norm\.bias", bias("hidden")),
        (r"lm_head\.weight", head()),
    ),
    tie_keepers=(r"model\.norm\.(weight|bias)",),
)
