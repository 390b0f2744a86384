"""DiffLlama (differential attention): Llama's projections, but the attention output of
head i (of the first half) minus λ × that of head H/2 + i, and the values split by kv-head
halves. Copying heads within their half (`[A A | B B]` instead of `[A B | A B]`) keeps every
pair and every GQA group aligned; the pairs then tile into o_proj. λ comes from per-head_dim
vectors and the layer index, both unchanged. Head replication only: --kv-heads keep would
reorder the pairs."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, linear, norm
from .blocks import output
from .llama import LLAMA, L

A = L + r"self_attn\."

DIFFLLAMA = replace(
    LLAMA,
    name="diffllama",
    # depth.py: lambda_init = 0.8 - 0.6·exp(-0.3·layer_idx) in each attention
    depth_refusal=lambda cfg: (
        "its differential attention depends on the layer index (lambda_init), so layers "
        "renumbered by inserted blocks would compute differently"
    ),
    architectures=("DiffLlamaForCausalLM",),
    model_types=("diffllama",),
    tensors=(
        (A + r"q_proj\.weight", linear("q_halves", "hidden")),
        (A + r"q_proj\.bias", bias("q_halves")),
        (A + r"[kv]_proj\.weight", linear("kv_halves", "hidden")),
        (A + r"[kv]_proj\.bias", bias("kv_halves")),
        *output(A + "o_proj"),
        (A + r"lambda_[qk][12]", norm("head")),
        *(row for row in LLAMA.tensors if "self_attn" not in row[0]),
    ),
    supports_kv_keep=False,
)
