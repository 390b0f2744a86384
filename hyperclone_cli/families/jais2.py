"""Jais 2: Llama's projections with biases everywhere, LayerNorm with bias, and a relu² MLP
without gate. A tie is kept by scaling the final LayerNorm's gain and bias by 1/n."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, embedding, head, norm
from .blocks import attention, mlp
from .llama import LLAMA, L

JAIS2 = replace(
    LLAMA,
    name="jais2",
    architectures=("Jais2ForCausalLM",),
    model_types=("jais2",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *mlp(L + r"mlp\.", "up_proj", "down_proj"),
        (L + r"(input|post_attention)_layernorm\.weight", norm()),
        (L + r"(input|post_attention)_layernorm\.bias", bias("hidden")),
        (r"model\.norm\.weight", norm()),
        (r"model\.norm\.bias", bias("hidden")),
        (r"lm_head\.weight", head()),
    ),
    tie_keepers=(r"model\.norm\.(weight|bias)",),
)
