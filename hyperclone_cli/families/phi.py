"""Phi (Phi-1, 1.5, 2): q/k/v with biases, output `dense`, optional per-head q/k LayerNorms
(`qk_layernorm`, over head_dim), fc1/fc2 MLP, one LayerNorm feeding attention and MLP in
parallel, partial rotary, `final_layernorm`, untied head with a bias."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, embedding, head, norm
from .blocks import attention, mlp
from .llama import LLAMA, L

M = r"model\."

PHI = replace(
    LLAMA,
    name="phi",
    architectures=("PhiForCausalLM",),
    model_types=("phi",),
    tensors=(
        (M + r"embed_tokens\.weight", embedding()),
        *attention(L, out="dense"),
        (L + r"self_attn\.[qk]_layernorm\.(weight|bias)", norm("head")),
        *mlp(L + r"mlp\.", "fc1", "fc2"),
        (L + r"input_layernorm\.(weight|bias)", norm()),
        (M + r"final_layernorm\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
        (r"lm_head\.bias", bias("fixed")),
    ),
    tie_keepers=(M + r"final_layernorm\.(weight|bias)",),
)
