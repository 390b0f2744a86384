"""Depth growth, after LLaMA Pro (Wu et al., ACL 2024): insert K new decoder blocks, each a
copy of the block below it whose projections into the residual stream (attention output,
MLP down projection, their biases) are zero. A pre-norm block computes `x + f(x)`; with
its last projections zero, `f(x) = 0` and the block is the identity, so the deeper model
computes the same function. Post-norm blocks (`LN(x + f(x))`) are not, and are refused.

The *layer map* lists, for each target layer, the source layer it comes from, or None for
a new block. A new block's weights are those of its `copy_sources` entry: the nearest
original layer below it (layer 0 for blocks placed at the bottom). Tensor names are
renumbered with the family's `layer_index` regex; config keys that depend on the layer
count follow the map. The new blocks' other weights get no gradient until their zeroed
projections move; noise on those weights keeps the function (the block still adds zero)
and breaks their symmetry with the block they copy.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from .errors import HypercloneError
from .families import IN, Family

if TYPE_CHECKING:
    from .plan import TensorPlan

LayerMap = list[int | None]  # target layer → source layer, None for a new block
NOISE_ROWS = 64  # a new block's noise is drawn per this many rows (fixed: part of the bytes)

# `…layers.N.` / `…h.N.` / `…blocks.N.`: used when a family's own pattern matches no tensor
GENERIC_LAYER_INDEX = re.compile(r"(?:.*?\.)?(?:layers|h|blocks)\.(?P<layer>\d+)\.")

# config.json keys that depend on the layer count, by how they follow the map
# a value per layer (GPT-Neo: attention_layers, "global"/"local")
LAYER_LISTS = (
    "layer_types",
    "no_rope_layers",
    "layers_block_type",
    "attention_layers",
    "layer_rope_theta",
)
LAYER_THRESHOLDS = ("max_window_layers", "first_k_dense_replace")  # layers below i differ
LAYER_INDEX_LISTS = ("mlp_only_layers", "full_attn_idxs")  # indices of some layers
# every k-th layer differs: kept only where a per-layer list says it all (Gemma 3 derives
# layer_types from sliding_window_pattern, and the explicit list wins when written)
LAYER_PERIODS = (
    "decoder_sparse_step",
    "interleave_moe_layer_step",
    "global_attn_every_n_layers",
    "moe_layer_freq",
)


def layer_map(layers: int, add: int, placement: str) -> LayerMap:
    """Where K new blocks go among L: `even` after every L/K original layers (LLaMA Pro's
    placement; the last one on top), `top` above the stack, `bottom` below it."""
    if placement == "top":
        return [*range(layers), *[None] * add]
    if placement == "bottom":
        return [*[None] * add, *range(layers)]
    after = Counter(math.ceil((i + 1) * layers / add) - 1 for i in range(add))
    out: LayerMap = []
    for s in range(layers):
        out += [s, *[None] * after[s]]
    return out


def copy_sources(lmap: LayerMap) -> list[int]:
    """The source layer whose weights each target layer holds: itself, or for a new block
    the nearest original layer below it (layer 0 below the whole stack)."""
    out, last = [], 0
    for s in lmap:
        last = s if s is not None else last
        out.append(last)
    return out


def describe(lmap: LayerMap) -> str:
    """`0 1 1+ 2 3 3+`: target layers in order, `s+` a new block copied from layer s."""
    return " ".join(
        str(c) if s is not None else f"{c}+" for s, c in zip(lmap, copy_sources(lmap), strict=True)
    )


def plan_layer_map(family: Family, cfg: dict, layers: int, add: int, placement: str) -> LayerMap:
    """The layer map, or a one-line refusal where zeroed blocks would change the function."""
    if not family.layer_index:
        raise HypercloneError(
            f"--add-layers is not supported for {family.name} yet: its table does not say "
            "where the layer index is in tensor names; grow its width only"
        )
    reason = family.depth_refusal(cfg) if family.depth_refusal else None
    if family.config_path:  # Fuyu: the text model's layer count lives in a sub-config
        reason = (
            f"its layers are counted in {family.config_path}, which depth growth does not rewrite"
        )
    if reason:
        raise HypercloneError(
            f"--add-layers cannot keep the function of this {family.name} model: {reason}; "
            "grow its width only"
        )
    if cfg.get("scale_depth") is not None:  # MiniCPM: branch × scale_depth / √layers
        raise HypercloneError(
            f"--add-layers cannot keep the function of this {family.name} model: its residual "
            "branches are scaled by scale_depth / √num_hidden_layers, which more layers would "
            "change; grow its width only"
        )
    for key in LAYER_PERIODS:
        if isinstance(cfg.get(key), int) and cfg[key] > 1:
            raise HypercloneError(
                f"config.json: {key} {cfg[key]} sets every {cfg[key]}-th layer apart, and "
                "inserted layers would shift that pattern; --add-layers cannot keep it"
            )
    return layer_map(layers, add, placement)


def deepen(
    tensors: list[TensorPlan], family: Family, lmap: LayerMap, noise: bool
) -> list[TensorPlan]:
    """The plan's per-tensor entries for the deeper model: each layer tensor once per target
    layer that holds it, renamed; in new blocks, residual writers zero and, with `noise`,
    the other weight matrices noisy."""
    pattern = re.compile(family.layer_index)
    if not any(pattern.match(tp.name) for tp in tensors):
        pattern = GENERIC_LAYER_INDEX  # a family that kept another's pattern (EXAONE: h.N.)
    targets: dict[int, list[tuple[int, bool]]] = {}
    for t, (s, c) in enumerate(zip(lmap, copy_sources(lmap), strict=True)):
        targets.setdefault(c, []).append((t, s is None))
    layers = sum(s is not None for s in lmap)
    out: list[TensorPlan] = []
    writers: Counter = Counter()  # residual-writing weight matrices per source layer
    shapes: dict[int, set[str]] = {}  # each source layer's tensor names, without the prefix
    for tp in tensors:
        m = pattern.match(tp.name)
        if m is None:
            out.append(tp)
            continue
        s = int(m.group("layer"))
        if s >= layers:
            raise HypercloneError(
                f"tensor {tp.name}: layer {s}, but config.json has {layers} layers; "
                "the config does not match the weights"
            )
        writers[s] += tp.role.writes_residual and len(tp.axes) >= 2
        shapes.setdefault(s, set()).add(tp.name[m.end() :])
        for t, new in targets[s]:
            name = f"{tp.name[: m.start('layer')]}{t}{tp.name[m.end('layer') :]}"
            if not new:
                out.append(replace(tp, name=name))
            elif tp.role.writes_residual:
                out.append(replace(tp, name=name, zero=True, noise=False))
            else:
                out.append(replace(tp, name=name, block_noise=noise and len(tp.axes) >= 2))
    # a copy placed elsewhere must have that place's tensors (ModernBERT's layer 0 has no
    # attention norm, the others do)
    first = shapes.get(0, set())
    for s, names in sorted(shapes.items()):
        if names != first:
            odd = sorted(names ^ first)[0]
            raise HypercloneError(
                f"--add-layers is not possible for this {family.name} model: its layers differ "
                f"(layer 0 and layer {s} differ in {odd}), so a copied block would not fit "
                "its new place; grow its width only"
            )
    # every block writes into the residual stream at least twice (attention, MLP): a table
    # that marks fewer has not said which projections must be zero
    short = [s for s in range(layers) if writers[s] < 2]
    if short:
        raise HypercloneError(
            f"--add-layers is not supported for {family.name} yet: its table does not mark "
            f"the projections of layer {short[0]} that write into the residual stream; "
            "grow its width only"
        )
    return out


def deepened_config(cfg: dict, family: Family, lmap: LayerMap) -> dict:
    """config.json updates for the deeper model: the layer count, and every key that
    depends on it, as the transformers config class resolves it (defaults included)."""
    layers = sum(s is not None for s in lmap)
    src = copy_sources(lmap)
    resolved = _resolved(cfg)
    keys = family.config_keys["layers"]
    updates: dict = {k: len(lmap) for k in keys if cfg.get(k) is not None} or {keys[0]: len(lmap)}
    for key in LAYER_LISTS:
        values = resolved.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != layers:
            raise HypercloneError(
                f"config.json: {key} should have one entry per layer ({layers}), "
                f"found {values!r}; fix the config"
            )
        updates[key] = [values[c] for c in src]
    if "attention_types" in cfg and "attention_layers" in updates:
        # GPT-Neo derives attention_layers from [[types, repeats], …]: one entry per layer
        updates["attention_types"] = [[[t], 1] for t in updates["attention_layers"]]
    for key in LAYER_THRESHOLDS:
        v = resolved.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and key in cfg:
            # the map keeps layer order, so the layers below the threshold stay below it
            updates[key] = sum(c < v for c in src) if v < layers else max(v, len(lmap))
    for key in LAYER_INDEX_LISTS:
        v = resolved.get(key)
        if isinstance(v, list) and key in cfg:
            updates[key] = [t for t, c in enumerate(src) if c in v]
    return updates


def _resolved(cfg: dict) -> dict:
    """The layer keys as the model's config class resolves them (layer_types derived from
    a sliding-window pattern that config.json leaves implied), else as config.json has them."""
    keys = (*LAYER_LISTS, *LAYER_THRESHOLDS, *LAYER_INDEX_LISTS)
    out = {k: cfg[k] for k in keys if k in cfg}
    try:
        from transformers import AutoConfig

        args = {k: v for k, v in cfg.items() if k not in ("model_type", "hyperclone")}
        resolved = AutoConfig.for_model(cfg["model_type"], **args)
    except Exception:  # an unknown model_type: config.json says all there is
        return out
    for k in keys:
        v = getattr(resolved, k, None)
        if v is not None:
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def zeros(t: TensorPlan, chunk_elements: int, alloc=None) -> Iterator[torch.Tensor]:
    """A zeroed residual writer of a new block, in row chunks: written, never computed from
    the source (0·w would keep -0.0 and NaN)."""
    shape = t.shape
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, chunk_elements // max(row, 1))
    for r0 in range(0, shape[0], step):
        rows = (min(shape[0], r0 + step) - r0, *shape[1:])
        chunk = alloc(rows, t.dtype) if alloc is not None else torch.empty(rows, dtype=t.dtype)
        yield chunk.zero_()


def with_block_noise(
    chunks: Iterable[torch.Tensor], w: torch.Tensor, t: TensorPlan, snr_db: float, seed: int
) -> Iterator[torch.Tensor]:
    """Add plain (not zero-sum) noise at `snr_db` to a new block's weight matrix: the block's
    output projections are zero, so any noise here keeps the function. Drawn on the CPU per
    block of NOISE_ROWS rows, each seeded by the seed, the target tensor's name and the block,
    so the bytes depend neither on the device nor on how the rows are chunked."""
    n_in = next((a.factor for a in t.axes if a.side == IN and a.widened), 1)
    mean_sq = float(w.double().pow(2).mean()) * (t.scale / n_in) ** 2 if w.numel() else 0.0
    std = math.sqrt(mean_sq / 10 ** (snr_db / 10))
    digest = hashlib.sha256(f"{seed}:{t.name}:new-block".encode()).digest()
    base = int.from_bytes(digest[:8], "little") >> 2
    rows, rest = t.shape[0], t.shape[1:]
    gen = torch.Generator(device="cpu")
    r0 = 0
    for chunk in chunks:
        r1 = r0 + chunk.shape[0]
        parts = []
        for b in range(r0 // NOISE_ROWS, -(-r1 // NOISE_ROWS)):
            lo = b * NOISE_ROWS
            gen.manual_seed(base + b)
            block = torch.randn((min(NOISE_ROWS, rows - lo), *rest), generator=gen)
            parts.append(block[max(r0 - lo, 0) : r1 - lo])
        eta = torch.cat(parts) * std
        if chunk.untyped_storage().data_ptr() == w.untyped_storage().data_ptr():
            chunk = chunk.clone()  # never add into the source (other targets read it too)
        yield chunk.add_(eta.to(chunk.device, chunk.dtype))
        r0 = r1


# --- verify: a new block is checked as the identity ------------------------------------


def recorded_layer_map(config: object) -> LayerMap | None:
    """The layer map `expand` recorded in config.json (`hyperclone.layer_map`), or None."""
    prov = (
        config.get("hyperclone")
        if isinstance(config, dict)
        else getattr(config, "hyperclone", None)
    )
    lmap = prov.get("layer_map") if isinstance(prov, dict) else None
    if not isinstance(lmap, list):
        return None
    return [s if isinstance(s, int) else None for s in lmap]


def check_layer_counts(lmap: LayerMap | None, src_layers: int, dst_layers: int) -> str | None:
    """Why the two layer counts do not fit the recorded map (None: they fit)."""
    if lmap is None:
        return None if src_layers == dst_layers else "no layer map is recorded in its config.json"
    if len(lmap) != dst_layers or sum(s is not None for s in lmap) != src_layers:
        return f"its recorded layer map ({describe(lmap)}) does not fit"
    return None


def layer_references(
    lmap: LayerMap | None, src_outputs: list[torch.Tensor], src_input: torch.Tensor | None
) -> list[torch.Tensor]:
    """What each target layer must output (before widening): its source layer's output, or
    for a new block, which is the identity, the reference of the layer below it (the
    source's first layer's input at the bottom)."""
    if lmap is None:
        return src_outputs
    refs: list[torch.Tensor] = []
    below = src_input
    for s in lmap:
        below = src_outputs[s] if s is not None else below
        refs.append(below)
    return refs


@contextmanager
def first_input(layer: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Capture the hidden state that enters `layer` (a new block at the bottom sees it)."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and not seen:
            seen.append(hidden.detach().float())

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()
