"""OpenAI GPT (GPT-1): GPT-2's Conv1D layers, but post-LayerNorm (`ln_1` after attention,
`ln_2` after the MLP) and no final norm, so a tied head is untied; learned positions
`positions_embed`; the MLP is always 4·n_embd wide (no config key)."""

from __future__ import annotations

from .base import Family, embedding, fixed_ffn, head, norm
from .blocks import fused_attention, mlp

T = r"transformer\."
H = T + r"h\.\d+\."

OPENAI_GPT = Family(
    name="openai-gpt",
    depth_refusal=lambda cfg: (
        "its LayerNorms sit on the residual stream (post-LN blocks), so a zeroed block "
        "still normalises and is not the identity"
    ),
    layer_index=T + r"h\.(?P<layer>\d+)\.",
    architectures=("OpenAIGPTLMHeadModel",),
    model_types=("openai-gpt",),
    tensors=(
        (T + r"(tokens|positions)_embed\.weight", embedding()),
        *fused_attention(H + r"attn\.", "c_attn", "c_proj", transposed=True),
        *mlp(H + r"mlp\.", "c_fc", "c_proj", transposed=True),
        (H + r"ln_[12]\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={
        "hidden": ("n_embd",),
        "heads": ("n_head",),
        "ffn": (),
        "layers": ("n_layer",),
    },
    ffn_per_hidden=4,
    config_quirks=fixed_ffn(4, "OpenAI GPT"),
    rotary=False,
    embedding_name=T + r"tokens_embed\.weight",
    ignored=(H + r"attn\.bias",),
    default_tie=True,
    supports_kv_keep=False,
)
