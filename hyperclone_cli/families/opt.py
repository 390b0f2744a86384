"""OPT: learned positions (offset 2, stored as a plain table), pre- or post-LayerNorm, tied
head, and in some sizes (350m) `project_in`/`project_out` between a narrower embedding and
the decoder. Real checkpoints name tensors `decoder.*` or `model.decoder.*`."""

from __future__ import annotations

from .base import Family, embedding, head, linear, norm
from .blocks import attention, mlp

D = r"(model\.)?decoder\."
L = D + r"layers\.\d+\."

OPT = Family(
    name="opt",
    architectures=("OPTForCausalLM",),
    model_types=("opt",),
    tensors=(
        (D + r"embed_tokens\.weight", embedding("embed")),
        (D + r"embed_positions\.weight", embedding("hidden")),
        (D + r"project_in\.weight", linear("hidden", "embed")),
        (D + r"project_out\.weight", linear("embed", "hidden")),
        (D + r"final_layer_norm\.(weight|bias)", norm()),
        *attention(L, out="out_proj"),
        *mlp(L, "fc1", "fc2"),
        (L + r"(self_attn_layer_norm|final_layer_norm)\.(weight|bias)", norm()),
        (r"lm_head\.weight", head("embed")),
    ),
    config_keys={  # no head_dim key: OPT always derives it
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "ffn": ("ffn_dim",),
        "embed": ("word_embed_proj_dim",),
        "layers": ("num_hidden_layers",),
    },
    rotary=False,
    embedding_name=D + r"embed_tokens\.weight",
    # The tied head reads the output of the final norm, or of project_out when there is one
    # after it (350m has project_out and no final norm).
    tie_keepers=(D + r"project_out\.weight", D + r"final_layer_norm\.(weight|bias)"),
    default_tie=True,
    layer_index=D + r"layers\.(?P<layer>\d+)\.",
    depth_refusal=lambda cfg: (
        None
        if cfg.get("do_layer_norm_before", True)
        else "its blocks are post-LayerNorm (do_layer_norm_before is false): the norm sits on "
        "the residual stream, so a block with zeroed output projections is not the identity"
    ),
    supports_kv_keep=False,  # no grouped-query attention: k/v have as many heads as q
)
