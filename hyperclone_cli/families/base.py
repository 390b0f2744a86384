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

from ..errors import HypercloneError

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


# size → config.json keys holding it, e.g. {"hidden": ("n_embd", "hidden_size"), …}: the
# first key present is read, every key present is widened. Sizes a family leaves out (or
# its config leaves out) take the value transformers implies: kv_heads = heads,
# head_dim = hidden // heads, embed = hidden.
ConfigKeys = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # HF class names handled
    model_types: tuple[str, ...]  # config.json model_type values handled
    tensors: tuple[tuple[str, Role], ...]  # regex (fullmatch) → role
    config_keys: ConfigKeys
    rotary: bool  # rotary position embeddings
    embedding_name: str  # regex of the token embedding tensor
    ffn_per_hidden: int | None = None  # ffn = this × hidden when the config leaves it null
    # updates beyond the table, (cfg, widened sizes) → {key: value}, for a family's quirks
    config_quirks: Callable[[dict, dict[str, int]], dict] | None = None
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

    def dims(self, cfg: dict) -> Dims:
        """The source sizes, from the config keys of `config_keys`."""
        keys = self.config_keys
        hidden = cfg_int(cfg, *keys["hidden"])
        heads = cfg_int(cfg, *keys["heads"])
        kv = cfg_int(cfg, *keys.get("kv_heads", ()), default=heads)
        if heads % kv:
            raise HypercloneError(
                f"config.json: {heads} attention heads are not a multiple of {kv} key/value heads"
            )
        ffn_default = self.ffn_per_hidden * hidden if self.ffn_per_hidden else None
        ffn = cfg_int(cfg, *keys["ffn"], default=ffn_default)
        head_dim_keys = keys.get("head_dim", ())
        if _first_set(cfg, head_dim_keys):
            head_dim = cfg_int(cfg, *head_dim_keys)
        else:
            head_dim = _derived_head_dim(cfg, keys, hidden, heads)
        return Dims(
            hidden=hidden,
            ffn=ffn,
            heads=heads,
            kv_heads=kv,
            head_dim=head_dim,
            embed=cfg_int(cfg, *keys.get("embed", ()), default=hidden),
            layers=cfg_int(cfg, *keys["layers"]),
            rotary=self.rotary,
        )

    def widened_config(self, cfg: dict, sizes: dict[str, int]) -> dict:
        """config.json updates: every key of the table that the config sets gets its widened
        size; a size the config leaves implied is written where the implied value is wrong."""
        implied = {
            "kv_heads": sizes["heads"],
            "head_dim": sizes["hidden"] // sizes["heads"],
            "embed": sizes["hidden"],
            "ffn": self.ffn_per_hidden * sizes["hidden"] if self.ffn_per_hidden else None,
        }
        updates = {}
        for size, keys in self.config_keys.items():
            if size == "layers":
                continue
            present = [k for k in keys if cfg.get(k) is not None]
            for k in present:
                updates[k] = sizes[size]
            if keys and not present and implied.get(size) != sizes[size]:
                updates[keys[0]] = sizes[size]
        if self.config_quirks:
            updates.update(self.config_quirks(cfg, sizes))
        return updates


def _first_set(cfg: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if cfg.get(k) is not None), None)


def _derived_head_dim(cfg: dict, keys: ConfigKeys, hidden: int, heads: int) -> int:
    if hidden % heads:
        h, n = _first_set(cfg, keys["hidden"]), _first_set(cfg, keys["heads"])
        if h == "hidden_size":
            what = f"hidden size {hidden} is not divisible by {heads} attention heads"
        else:  # name GPT-2's own keys
            what = f"{h} {hidden} is not divisible by {n} {heads}"
        raise HypercloneError(f"config.json: {what}")
    return hidden // heads


def cfg_int(cfg: dict, *keys: str, default: int | None = None) -> int:
    """The first of `keys` present in config.json, as an int."""
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise HypercloneError(f"config.json: {k} must be a positive integer, got {v!r}")
            return v
    if default is not None:
        return default
    raise HypercloneError(f"config.json: missing {keys[0]}")
