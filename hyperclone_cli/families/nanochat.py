"""NanoChat: Llama's projections with RMSNorms *without* parameters (also on each head's q
and k, and on the embedding before the first layer), a relu² MLP `fc1`/`fc2`, logit
soft-capping on unchanged logits. As in OLMo, no norm can carry a tie's 1/n: a tie is
removed and lm_head written."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head
from .blocks import attention, mlp
from .llama import LLAMA, L

NANOCHAT = replace(
    LLAMA,
    name="nanochat",
    architectures=("NanoChatForCausalLM",),
    model_types=("nanochat",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        *mlp(L + r"mlp\.", "fc1", "fc2"),
        (r"lm_head\.weight", head()),
    ),
    tie_keepers=(),
)
