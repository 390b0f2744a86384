"""MPT: ALiBi positions, fused `Wqkv` as `[q | k | v]`, `up_proj`/`down_proj` MLP (always
4·d_model in transformers, whatever `expansion_ratio` says), LayerNorms without bias
(`no_bias`), tied head. ALiBi slopes depend on the head count, so heads are kept and grown
(head-dim attention); the bias is added after `softmax_scale`, which is 1/√head_dim unless
the config fixes it (then q is scaled by 1/n). `clip_qkv` clamps q after the projection
and `qk_ln` normalises it: both would undo the q scaling, refused."""

from __future__ import annotations

from .base import Family, embedding, fixed_ffn, head, norm
from .blocks import fused_attention, mlp

T = r"transformer\."
B = T + r"blocks\.\d+\."


def _attn(cfg: dict) -> dict:
    return cfg.get("attn_config") or {}


def _refuse(cfg: dict) -> str | None:
    a = _attn(cfg)
    if a.get("clip_qkv"):
        return (
            "attn_config.clip_qkv clamps q after the projection, so the 1/√n q scale "
            "of head-dim attention (needed by ALiBi) would change what is clipped"
        )
    if a.get("qk_ln"):
        return (
            "attn_config.qk_ln normalises q after the projection, undoing the 1/√n q "
            "scale of head-dim attention (needed by ALiBi)"
        )
    return None


MPT = Family(
    name="mpt",
    layer_index=T + r"blocks\.(?P<layer>\d+)\.",
    architectures=("MptForCausalLM",),
    model_types=("mpt",),
    tensors=(
        (T + r"wte\.weight", embedding()),
        *fused_attention(B + r"attn\.", "Wqkv", "out_proj"),
        *mlp(B + r"ffn\.", "up_proj", "down_proj"),
        (B + r"norm_[12]\.(weight|bias)", norm()),
        (T + r"norm_f\.(weight|bias)", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={
        "hidden": ("d_model",),
        "heads": ("n_heads",),
        "ffn": (),
        "layers": ("n_layers",),
    },
    ffn_per_hidden=4,
    config_quirks=fixed_ffn(4, "MPT"),
    rotary=False,
    embedding_name=T + r"wte\.weight",
    tie_keepers=(T + r"norm_f\.(weight|bias)",),
    default_tie=True,
    supports_kv_keep=False,
    alibi=lambda cfg: (
        "ALiBi slopes depend on the number of heads" if _attn(cfg).get("alibi", True) else None
    ),
    unscaled=lambda cfg: _attn(cfg).get("softmax_scale") is not None,
    refuse=_refuse,
)
