"""What an architecture family *is*: tensor-name patterns → roles, sizes from config.json,
config keys to widen. What is *done* to it lives in plan.py and clone.py.

A role names, for each axis of a tensor, the *space* the axis lives in and its *side*:
- spaces: "hidden" (the residual stream), "embed" (OPT's word_embed_proj_dim), "ffn",
  "ffn_half" (half of it, where the config's size counts gate and up together),
  "q" (query heads × head_dim), "kv" (key/value heads × head_dim), "qkv" (GPT-NeoX's
  per-head fused [q k v]), "head" (one head's head_dim: per-head q/k norms), "heads" and
  "kv_heads" (one entry per query / key-value head: attention sinks, Cohere's (heads,
  head_dim) q/k norms, Doge's per-kv-head rates, CPM-Ant's relative position bias),
  "q_head_blocks" (per query head, a block of any width: MLA's q_b/kv_b/o projections),
  "q_halves"/"kv_halves" (q or kv, heads copied within each half: differential attention),
  "fixed" (never widens: vocabulary, positions, latent ranks, scalars);
  a tuple of spaces is a fused axis, e.g. ("q", "kv", "kv") for `[q | k | v]`.
- sides: OUT (gathered: rows of a Linear, embeddings, norms, biases) or IN
  (gathered and divided by the number of copies: columns of a Linear).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

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
    # "q" or "kv": one tensor per head, its index the pattern's group `head` (StableLM's
    # per-head q/k LayerNorms): written once per target head that copies it
    per_head: str | None = None
    # adds into the residual stream (attention output, MLP down projection, their biases):
    # zero in a block that --add-layers inserts, so the block starts as the identity
    writes_residual: bool = False
    noisy: bool = True  # False for MoE routers and gates: their logits pick experts


def linear(out: Space, inp: Space, **kw) -> Role:
    """nn.Linear weight, shape (out, in)."""
    return Role(((out, OUT), (inp, IN)), **kw)


def conv1d(inp: Space, out: Space, **kw) -> Role:
    """GPT-2's Conv1D stores the weight transposed: shape (in, out)."""
    return Role(((inp, IN), (out, OUT)), **kw)


def bias(space: Space, **kw) -> Role:
    return Role(((space, OUT),), **kw)


def norm(space: Space = "hidden", offset: float = 0.0, per_head: str | None = None) -> Role:
    return Role(((space, OUT),), norm_offset=offset, per_head=per_head)


def fixed(ndim: int = 1) -> Role:
    """A parameter that never widens: an activation's learnable scalars (ndim 0 or 1)."""
    return Role((("fixed", OUT),) * ndim)


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
    # regex → multiplier of n, for tensors whose forward-pass constant grows with the width
    # (Dory's logit scale meets hidden states of norm 1, not copies): applied on top of all else
    scaled: tuple[tuple[str, Callable[[int], float]], ...] = ()
    default_tie: bool = False  # tie_word_embeddings when config.json does not say
    ties: bool = True  # False: the model never ties its head, whatever the config says
    # the sub-config holding the sizes (Fuyu: "text_config"), read and widened there
    config_path: str | None = None
    supports_kv_keep: bool = True
    # Attention quirks read from config.json (None: absent). `mqa`: a flag fixes one k/v
    # head (GPT-BigCode, Falcon-7B), so its copies cannot become heads: k/v are kept.
    # `alibi`: the reason head replication is not exact (ALiBi slopes follow the head
    # count), so head-dim attention is used. `unscaled`: no 1/√head_dim softmax scale
    # (GPT-Neo), so head-dim attention scales q by 1/n instead of 1/√n. `refuse`: why a
    # config cannot be widened exactly, or None. `variant`: the family for this config,
    # where an option changes the tensor layout (Falcon, GPT-BigCode).
    mqa: Callable[[dict], bool] | None = None
    alibi: Callable[[dict], str | None] | None = None
    unscaled: Callable[[dict], bool] | None = None
    refuse: Callable[[dict], str | None] | None = None
    variant: Callable[[dict], Family] | None = None
    # depth growth (depth.py): a regex whose group "layer" is the layer index in a tensor name,
    # and why a block with zeroed residual writers would not be the identity, if it would not
    layer_index: str = ""
    depth_refusal: Callable[[dict], str | None] | None = None
    # more FFN-like spaces (MoE experts, shared experts): (space, size key, multiplier key
    # or None); the size is cfg[size key] (× cfg[multiplier key]); each widens by the FFN
    # factor, and so does its size key in config.json
    ffn_spaces: tuple[tuple[str, str, str | None], ...] = ()

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
        cfg = self._sizes_config(cfg)
        hidden = cfg_int(cfg, *keys["hidden"])
        heads = cfg_int(cfg, *keys["heads"])
        kv = cfg_int(cfg, *keys.get("kv_heads", ()), default=heads)
        if self.mqa is not None and self.mqa(cfg):
            kv = 1
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
        if self.config_path:
            sub = self._sizes_config(cfg)
            inner = replace(self, config_path=None).widened_config(sub, sizes)
            return {self.config_path: {**sub, **inner}}
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

    def _sizes_config(self, cfg: dict) -> dict:
        if not self.config_path:
            return cfg
        sub = cfg.get(self.config_path)
        if not isinstance(sub, dict):
            raise HypercloneError(f"config.json: missing {self.config_path}")
        return sub

    def ffn_space_sizes(self, cfg: dict) -> dict[str, int]:
        """Source sizes of the extra FFN spaces (MoE experts, shared experts)."""
        sizes = {}
        for space, key, times in self.ffn_spaces:
            if not cfg.get(key):
                continue  # e.g. no shared expert
            sizes[space] = cfg_int(cfg, key) * (cfg_int(cfg, times) if times else 1)
        return sizes


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


def fixed_ffn(ratio: int, what: str) -> Callable[[dict, dict[str, int]], dict]:
    """config_quirks of a model whose MLP is always `ratio`·hidden wide (no config key):
    --ffn-factor other than --factor cannot be expressed."""

    def check(cfg: dict, sizes: dict[str, int]) -> dict:
        if sizes["ffn"] != ratio * sizes["hidden"]:
            raise HypercloneError(
                f"{what} has no config key for the MLP width (always {ratio}·hidden): "
                "--ffn-factor must equal --factor"
            )
        return {}

    return check
