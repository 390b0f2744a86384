"""Dory (nGPT on the unit sphere): every hidden vector is L2-normalised (a sum, not a mean),
so the widened model carries `[h; h; …] / √n`, the unit vector of the copies. Each layer
keeps that exactly: q and k are normalised per head, the output gate's scale
`(s_gate · hidden^¼)²` and the MLP's `suv · √hidden` grow by √n with the config and cancel
the 1/√n of their inputs, the attention and MLP outputs are normalised again, and the
residual interpolates at per-channel rates (λ, copied). q_proj and k_proj are multiplied by
√n so that each head's q and k, normalised with an eps, are the source's to the bit. The
head meets the 1/√n: `lm_head.logit_scale` is multiplied by √n (by √n / n with a tied
embedding, which is read n times). Saved names: `backbone.*`, attention gate `g_proj`,
as transformers stores them."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, embedding, fixed, head, linear
from .blocks import attention, gated_mlp
from .llama import LLAMA

B = r"backbone\.layers\.\d+\."


def _sqrt(n: int) -> float:
    return n**0.5


DORY = replace(
    LLAMA,
    name="dory",
    # depth.py: nGPT's update is h ← norm(h + α·(norm(f(h)) − h)), not h + f(h)
    depth_refusal=lambda cfg: (
        "its residual update is a normalised interpolation (nGPT), not a sum, so a block "
        "with zeroed output projections is not the identity"
    ),
    architectures=("DoryForCausalLM",),
    model_types=("dory",),
    tensors=(
        (r"backbone\.embeddings\.weight", embedding()),
        *attention(B),
        (B + r"self_attn\.g_proj\.weight", linear("q", "hidden")),
        (B + r"self_attn\.(s_gate|sqk)", bias("q")),
        *gated_mlp(B),
        (B + r"mlp\.suv_(gate|up)", bias("ffn")),
        (B + r"lambda_[12]", bias("hidden")),
        (r"lm_head\.weight", head()),
        (r"lm_head\.logit_scale", fixed(1)),
    ),
    embedding_name=r"backbone\.embeddings\.weight",
    tie_keepers=(r"lm_head\.logit_scale",),
    scaled=(
        (r"lm_head\.logit_scale", _sqrt),
        (B + r"self_attn\.[qk]_proj\.(weight|bias)", _sqrt),
    ),
)
