"""GLM and GLM-4: Llama's q/k/v/o (q/k/v biases) with a fused `gate_up_proj` whose rows are
`[gate | up]` (chunk(2)), each half cloned in its own place; partial rotary, interleaved
within each head. GLM-4 adds RMSNorms after the attention and the MLP."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import attention, gated_mlp
from .llama import LLAMA, L

GLM = replace(
    LLAMA,
    name="glm",
    architectures=("GlmForCausalLM", "Glm4ForCausalLM"),
    model_types=("glm", "glm4"),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *gated_mlp(L, fused=True),
        (L + r"(input|post_attention|post_self_attn|post_mlp)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
)
