"""What an architecture family *is*: tensor-name patterns → roles, sizes from config.json,
config keys to widen. What is *done* to it lives in plan.py and clone.py.

A role names, for each axis of a tensor, the *space* the axis lives in and its *side*:
- spaces: "hidden" (the residual stream), "embed" (OPT's word_embed_proj_dim), "ffn",
  "q" (query heads × head_dim), "kv" (key/value heads × head_dim), "qkv" (GPT-NeoX's
  per-head fused [q k v]), "head" (one head's head_dim: per-head q/k norms), "fixed"
  (never widens: vocabulary, positions);
  a tuple of spaces is a fused axis, e.g. ("q", "kv", "kv") for `[q | k | v]`.
- sides: OUT (gathered: rows of a Linear, embeddings, norms, biases) or IN
  (gathered and divided by the number of copies: columns of a Linear).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

OUT = "out"
IN = "in"

Space = str | tuple[str, ...]
Axis = tuple[Space, str]


@dataclass(frozen=True)
class Role:
    axes: tuple[Axis, ...]
    lm_head: bool = False  # the LM head: dropped when the embedding is tied to it
    q_scaled: bool = False  # multiplied by 1/√n under head-dim attention (q weight/bias)
    norm_offset: float = 0.0  # Gemma stores RMSNorm gain as (1 + w)


def linear(out: Space, inp: Space, **kw) -> Role:
    """nn.Linear weight, shape (out, in)."""
    return Role(((out, OUT), (inp, IN)), **kw)


def conv1d(inp: Space, out: Space, **kw) -> Role:
    """GPT-2's Conv1D stores the weight transposed: shape (in, out)."""
    return Role(((inp, IN), (out, OUT)), **kw)


def bias(space: Space, **kw) -> Role:
    return Role(((space, OUT),), **kw)


def norm(space: Space = "hidden", offset: float = 0.0) -> Role:
    return Role(((space, OUT),), norm_offset=offset)


def embedding(space: Space = "hidden") -> Role:
    """(rows, width) table whose rows are looked up: the width is an output side."""
    return Role((("fixed", OUT), (space, OUT)))


def head(space: Space = "hidden") -> Role:
    """The LM head (vocab, width): the width is an input side."""
    return Role((("fixed", OUT), (space, IN)), lm_head=True)


@dataclass(frozen=True)
class Dims:
    """Source sizes read from config.json (never from module attributes)."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    embed: int  # width of the token embedding (== hidden except OPT-350m-like models)
    layers: int
    rotary: bool  # rotary position embeddings: head-dim attention is not exact


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # HF class names handled
    model_types: tuple[str, ...]  # config.json model_type values handled
    tensors: tuple[tuple[str, Role], ...]  # regex (fullmatch) → role
    dims: Callable[[dict], Dims]
    config_keys: Callable[[dict, Dims, dict[str, int]], dict]  # (cfg, dims, sizes) → updates
    embedding_name: str  # regex of the token embedding tensor
    head_name: str = "lm_head.weight"  # name written when untying
    tie_keepers: tuple[str, ...] = ()  # regexes, in order of preference, scaled to keep a tie
    ignored: tuple[str, ...] = ()  # regexes of stored buffers transformers recomputes
    embed_multiplier: Callable[[int], float] = field(default=lambda n: 1.0)
    default_tie: bool = False  # tie_word_embeddings when config.json does not say
    supports_kv_keep: bool = True

    def role_of(self, name: str) -> Role | None:
        for pattern, role in self.tensors:
            if re.fullmatch(pattern, name):
                return role
        return None

    def is_ignored(self, name: str) -> bool:
        return any(re.fullmatch(p, name) for p in self.ignored)


def cfg_int(cfg: dict, *keys: str, default: int | None = None) -> int:
    """The first of `keys` present in config.json, as an int."""
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                from ..errors import HypercloneError

                raise HypercloneError(f"config.json: {k} must be a positive integer, got {v!r}")
            return v
    if default is not None:
        return default
    from ..errors import HypercloneError

    raise HypercloneError(f"config.json: missing {keys[0]}")


def head_dims(cfg: dict, hidden: int, heads: int) -> int:
    """head_dim from config.json, or hidden // heads (which must divide)."""
    from ..errors import HypercloneError

    hd = cfg.get("head_dim")
    if hd is None:
        if hidden % heads:
            raise HypercloneError(
                f"config.json: hidden size {hidden} is not divisible by {heads} attention heads"
            )
        return hidden // heads
    return cfg_int(cfg, "head_dim")


def widen(cfg: dict, sizes: dict[str, int], mapping: dict[str, str]) -> dict:
    """Updates for every config key in `mapping` (key → size name) that the config has."""
    return {k: sizes[s] for k, s in mapping.items() if k in cfg and cfg[k] is not None}
