"""Tensor groups that recur across families, as (regex, role) rows: q/k/v/o attention,
fused [q | k | v] projections, plain and gated MLPs. Each takes the layer prefix and
the names that differ, so a family spells only what is its own."""

from __future__ import annotations

from .base import Role, Space, bias, conv1d, linear

Rows = tuple[tuple[str, Role], ...]
QKV = ("q", "kv", "kv")  # [q | k | v] fused along one axis, GQA sizes (H·hd, G·hd, G·hd)


def attention(prefix: str, out: str = "o_proj", module: str = r"self_attn\.") -> Rows:
    """q/k/v and output projections with optional biases; q is scaled under head-dim
    attention. `out` is the output projection's name (OPT: out_proj), `module` the
    attention module's (EXAONE: attn.attention.)."""
    a = prefix + module
    return (
        (a + r"q_proj\.weight", linear("q", "hidden", q_scaled=True)),
        (a + r"q_proj\.bias", bias("q", q_scaled=True)),
        (a + r"[kv]_proj\.weight", linear("kv", "hidden")),
        (a + r"[kv]_proj\.bias", bias("kv")),
        *output(a + out),
    )


def fused_attention(
    prefix: str, qkv: str, out: str, space: Space = QKV, transposed: bool = False
) -> Rows:
    """One fused projection for q, k and v, each part cloned in its own place. `space` is
    its layout (QKV, or GPT-NeoX's per-head "qkv"); `transposed`: GPT-2's Conv1D."""
    return (  # q's rows (its place in the fused axis) are scaled under head-dim attention
        (rf"{prefix}{qkv}\.weight", _weight(space, "hidden", transposed, q_scaled=True)),
        (rf"{prefix}{qkv}\.bias", bias(space, q_scaled=True)),
        *output(prefix + out, transposed),
    )


def output(name: str, transposed: bool = False) -> Rows:
    """Attention output projection: heads in, residual stream out."""
    return (
        (rf"{name}\.weight", _weight("hidden", "q", transposed, writes_residual=True)),
        (rf"{name}\.bias", bias("hidden", writes_residual=True)),
    )


def mlp(prefix: str, up: str, down: str, transposed: bool = False, up_space: Space = "ffn") -> Rows:
    """Two-layer MLP hidden → ffn → hidden. `up` may match several projections (gate and
    up), or be one fused [gate | up] with `up_space` ("ffn", "ffn")."""
    return (
        (rf"{prefix}{up}\.weight", _weight(up_space, "hidden", transposed)),
        (rf"{prefix}{up}\.bias", bias(up_space)),
        (rf"{prefix}{down}\.weight", _weight("hidden", "ffn", transposed, writes_residual=True)),
        (rf"{prefix}{down}\.bias", bias("hidden", writes_residual=True)),
    )


def gated_mlp(prefix: str, fused: bool = False) -> Rows:
    """Llama's gate/up/down MLP: gate and up are both hidden → ffn; Phi-3 fuses them."""
    if fused:
        return mlp(prefix + r"mlp\.", r"gate_up_proj", r"down_proj", up_space=("ffn", "ffn"))
    return mlp(prefix + r"mlp\.", r"(gate|up)_proj", r"down_proj")


def _weight(out: Space, inp: Space, transposed: bool, **kw) -> Role:
    """A weight mapping `inp` to `out`, stored (out, in), or (in, out) by GPT-2's Conv1D."""
    return conv1d(inp, out, **kw) if transposed else linear(out, inp, **kw)
