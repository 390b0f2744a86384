"""BioGPT: OPT-like decoder (q/k/v/out_proj with biases, fc1/fc2, pre-LayerNorm, learned
positions with offset 2 stored as a plain table) under `biogpt.`, head `output_projection`
tied. With `scale_embedding` the token embedding is multiplied by √hidden_size, which grows
by √n: it is stored divided by √n, as Gemma's (positions are added unscaled)."""

from __future__ import annotations

from dataclasses import replace

from .base import Family, embedding, head, norm
from .blocks import attention, mlp

B = r"biogpt\."
L = B + r"layers\.\d+\."


def _variant(cfg: dict) -> Family:
    scaled = cfg.get("scale_embedding", True)
    return replace(BIOGPT, embed_multiplier=lambda n: n**-0.5) if scaled else BIOGPT


BIOGPT = Family(
    name="biogpt",
    layer_index=B + r"layers\.(?P<layer>\d+)\.",
    architectures=("BioGptForCausalLM",),
    model_types=("biogpt",),
    tensors=(
        (B + r"embed_(tokens|positions)\.weight", embedding()),
        *attention(L, out="out_proj"),
        *mlp(L, "fc1", "fc2"),
        (L + r"(self_attn_layer_norm|final_layer_norm)\.(weight|bias)", norm()),
        (B + r"layer_norm\.(weight|bias)", norm()),
        (r"output_projection\.weight", head()),
    ),
    config_keys={
        "hidden": ("hidden_size",),
        "heads": ("num_attention_heads",),
        "ffn": ("intermediate_size",),
        "layers": ("num_hidden_layers",),
    },
    rotary=False,
    embedding_name=B + r"embed_tokens\.weight",
    head_name="output_projection.weight",
    tie_keepers=(B + r"layer_norm\.(weight|bias)",),
    default_tie=True,
    supports_kv_keep=False,
    variant=_variant,
)
