"""StarCoder2: Llama's attention names with biases (`use_bias`), plain `c_fc`/`c_proj` MLP,
LayerNorms with bias, tied head by default."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import attention, mlp
from .llama import LLAMA, L

STARCODER2 = replace(
    LLAMA,
    name="starcoder2",
    architectures=("Starcoder2ForCausalLM",),
    model_types=("starcoder2",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *mlp(L + r"mlp\.", "c_fc", "c_proj"),
        (L + r"(input|post_attention)_layernorm\.(weight|bias)", norm()),
        (r"model\.norm\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    ),
    tie_keepers=(r"model\.norm\.(weight|bias)",),
    default_tie=True,
)
