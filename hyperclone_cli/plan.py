"""The plan: every source tensor → (role, target name, shape, dtype, shard), computed and
checked in full before a single byte is written. `--dry-run` is this and nothing more."""

from __future__ import annotations

import copy
import hashlib
import math
import re
from dataclasses import dataclass, field, replace

import torch

from ._version import __version__
from .checkpoint import FLOAT_DTYPES, Checkpoint
from .clone import AxisMap, identity_map, interleave_map, tile_map
from .errors import HypercloneError
from .families import IN, OUT, Dims, Family, Role, family_for
from .families.base import head as head_role
from .noise import NOISE_VERSION
from .recipe import Recipe
from .writer import Entry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TensorPlan:
    name: str  # target name
    source: str  # source tensor it is made from
    role: Role
    axes: tuple[AxisMap, ...]
    dtype: torch.dtype
    scale: float = 1.0
    noise: bool = False
    diagonal: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.target_size for a in self.axes)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    @property
    def entry(self) -> Entry:
        return Entry(self.name, self.dtype, self.shape)

    def tensor_seed(self, seed: int) -> int:
        """Noise seed of this tensor: depends on the run's seed and the tensor's name only,
        so the bytes do not depend on the order or the device tensors are processed on."""
        digest = hashlib.sha256(f"{seed}:{self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class ShardPlan:
    file: str
    tensors: list[TensorPlan]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass
class Plan:
    source: Checkpoint
    family: Family
    recipe: Recipe
    dims: Dims
    sizes: dict[str, int]
    config: dict  # the widened config.json
    tensors: list[TensorPlan]
    dropped: list[tuple[str, str]]  # (source tensor, why it is not written)
    tie: str  # "kept" | "untied" | "none"
    notes: list[str] = field(default_factory=list)
    shards: list[ShardPlan] = field(default_factory=list)

    @property
    def target_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def target_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def largest_tensor_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors), default=0)

    def provenance(self) -> dict:
        r = self.recipe
        return {
            "tool": f"hyperclone {__version__}",
            "method": "HyperCloning (arXiv 2409.12903)",
            "source": str(self.source.path),
            "factor": r.factor,
            "ffn_factor": r.ffn_multiplier,
            "attention": r.attention,
            "kv_heads": r.kv_heads,
            "layout": r.layout,
            "noise_snr_db": r.noise,
            "noise_generator": NOISE_VERSION if r.noise is not None else None,
            "seed": r.seed,
            "tie": self.tie,
        }


def resolved_tie(config: dict, family: Family) -> bool:
    """tie_word_embeddings as transformers would read it (config classes have defaults)."""
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    text = config.get("text_config")
    if isinstance(text, dict) and "tie_word_embeddings" in text:
        return bool(text["tie_word_embeddings"])
    return family.default_tie


def space_maps(dims: Dims, recipe: Recipe) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Index maps per space, and the widened sizes for config.json."""
    n, m = recipe.factor, recipe.ffn_multiplier
    H, G, hd = dims.heads, dims.kv_heads, dims.head_dim
    maps = {
        "hidden": tile_map(dims.hidden, n),
        "embed": tile_map(dims.embed, n),
        "ffn": tile_map(dims.ffn, m),
    }
    if recipe.attention == "head-dim":
        # each head keeps its place and grows: its rows repeated next to each other
        maps["q"] = interleave_map(H * hd, n, hd)
        maps["kv"] = interleave_map(G * hd, n, hd)
        heads, kv, head_dim = H, G, n * hd
    elif recipe.kv_heads == "keep":
        # copies of each query head side by side, so head i still maps to its KV head
        maps["q"] = interleave_map(H * hd, n, hd)
        maps["kv"] = identity_map(G * hd)
        heads, kv, head_dim = n * H, G, hd
    else:
        # heads [h0 … hH-1, h0 … hH-1]: the GQA grouping i → i // (H/G) stays right
        maps["q"] = tile_map(H * hd, n)
        maps["kv"] = tile_map(G * hd, n)
        heads, kv, head_dim = n * H, n * G, hd
    maps["qkv"] = tile_map(3 * H * hd, n)  # GPT-NeoX per-head [q k v]: whole heads tile
    # norms over one head (Qwen3, Gemma 3 q/k norms): only head-dim attention widens a head
    maps["head"] = tile_map(hd, n) if recipe.attention == "head-dim" else identity_map(hd)
    sizes = {
        "hidden": n * dims.hidden,
        "embed": n * dims.embed,
        "ffn": m * dims.ffn,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
    }
    return maps, sizes


def _axis(space, side: str, size: int, maps: dict[str, torch.Tensor], name: str, k: int) -> AxisMap:
    parts = space if isinstance(space, tuple) else (space,)
    if parts == ("fixed",):
        return AxisMap(identity_map(size), size, side)
    idxs, offset = [], 0
    for p in parts:
        idx = maps[p]
        src = int(idx.max()) + 1 if idx.numel() else 0
        idxs.append(idx + offset)
        offset += src
    if offset != size:
        raise HypercloneError(
            f"tensor {name}: axis {k} has size {size}, but config.json implies {offset} "
            f"({' + '.join(parts)}); the config does not match the weights"
        )
    return AxisMap(torch.cat(idxs), size, side)


def _scale_q(axis: AxisMap, space, maps: dict[str, torch.Tensor], q_scale: float) -> AxisMap:
    """The q part of an axis multiplied by q_scale: all of it, or q's place in [q | k | v]."""
    parts = space if isinstance(space, tuple) else (space,)
    if "q" not in parts:
        return axis
    scale = [torch.full((maps[p].numel(),), q_scale if p == "q" else 1.0) for p in parts]
    return replace(axis, scale=torch.cat(scale))


def make_plan(ckpt: Checkpoint, recipe: Recipe) -> Plan:
    cfg = ckpt.config
    family = family_for(cfg)
    dims = family.dims(cfg)
    n = recipe.factor
    if recipe.attention == "head-dim" and dims.rotary:
        raise HypercloneError(
            f"--attention head-dim is not exact for {family.name}: rotary position embeddings "
            "change frequency with head_dim; use --attention heads"
        )
    if recipe.kv_heads == "keep" and not family.supports_kv_keep:
        raise HypercloneError(
            f"--kv-heads keep is not possible for {family.name}: its attention needs as many "
            "key/value heads as query heads; use --kv-heads replicate"
        )
    maps, sizes = space_maps(dims, recipe)
    tied = resolved_tie(cfg, family)
    notes: list[str] = []
    dropped: list[tuple[str, str]] = []

    # Keep a tie by scaling what feeds the head (norm or projection) by 1/(n·a), where the
    # embedding is stored as a·[E, E, …]; without such a tensor, or on request, untie.
    embed_mult = family.embed_multiplier(n)
    keepers: list[str] = []
    if tied:
        for pattern in family.tie_keepers:
            keepers = [t for t in ckpt.tensors if re.fullmatch(pattern, t)]
            if keepers:
                break
    if not tied:
        tie = "none"
    elif recipe.tie == "untie":
        tie = "untied"
        notes.append("tie removed on request: lm_head written explicitly")
    elif not keepers:
        tie = "untied"
        notes.append(
            "tie removed: no final norm or projection with parameters can carry the 1/n "
            "scale, so lm_head is written explicitly"
        )
    else:
        tie = "kept"
    tie_scale = 1.0 / (n * embed_mult)

    out_dtype = DTYPES[recipe.dtype] if recipe.dtype else None
    tensors: list[TensorPlan] = []
    embedding_source = None
    in_file_order = sorted(ckpt.tensors.items(), key=lambda kv: (str(kv[1].file), kv[1].start))
    for name, info in in_file_order:
        if family.is_ignored(name):
            dropped.append((name, "buffer recomputed by transformers"))
            continue
        role = family.role_of(name)
        if role is None:
            raise HypercloneError(
                f"{info.file.name}: tensor {name} is not mapped by the {family.name} family; "
                "refusing to drop it "
                "silently (is this checkpoint a variant hyperclone does not support yet?)"
            )
        if role.lm_head and tied:
            dropped.append((name, "duplicate of the tied embedding"))
            continue
        if len(role.axes) != len(info.shape):
            raise HypercloneError(
                f"tensor {name}: expected {len(role.axes)} dimensions, found shape {info.shape}"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise HypercloneError(
                f"{info.file.name}: tensor {name} has dtype {info.dtype}, which hyperclone "
                "cannot widen (only floating-point weights are cloned)"
            )
        axes = tuple(
            _axis(space, side, info.shape[k], maps, name, k)
            for k, (space, side) in enumerate(role.axes)
        )
        scale = 1.0
        if role.q_scaled and recipe.attention == "head-dim":
            # q·k grows n-fold; the softmax scale shrinks only √n-fold
            q_scale = 1 / math.sqrt(n)
            axes = tuple(
                _scale_q(a, sp, maps, q_scale) for a, (sp, _) in zip(axes, role.axes, strict=True)
            )
        if re.fullmatch(family.embedding_name, name):
            embedding_source = name
            scale *= embed_mult
        if name in keepers and tie == "kept":
            scale *= tie_scale
        widened_in = any(a.side == IN and a.widened for a in axes)
        widened_out = any(a.side == OUT and a.widened for a in axes)
        tensors.append(
            TensorPlan(
                name=name,
                source=name,
                role=role,
                axes=axes,
                dtype=out_dtype or info.dtype,
                scale=scale,
                noise=recipe.noise is not None and widened_in,
                diagonal=recipe.layout == "diagonal" and widened_in and widened_out,
            )
        )
    if tie == "untied":
        if embedding_source is None:
            raise HypercloneError(f"no token embedding tensor found ({family.embedding_name})")
        info = ckpt.tensors[embedding_source]
        emb_role = family.role_of(embedding_source)
        role = head_role(emb_role.axes[1][0] if emb_role else "hidden")
        axes = tuple(
            _axis(space, side, info.shape[k], maps, family.head_name, k)
            for k, (space, side) in enumerate(role.axes)
        )
        tensors.append(
            TensorPlan(
                family.head_name,
                embedding_source,
                role,
                axes,
                out_dtype or info.dtype,
                noise=recipe.noise is not None,
            )
        )

    config = copy.deepcopy(cfg)
    config.update(family.widened_config(cfg, sizes))
    if tie == "untied":
        config["tie_word_embeddings"] = False
    if recipe.dtype:
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = recipe.dtype
        if "torch_dtype" not in config and "dtype" not in config:
            config["dtype"] = recipe.dtype
    plan = Plan(ckpt, family, recipe, dims, sizes, config, tensors, dropped, tie, notes)
    config["hyperclone"] = plan.provenance()
    plan.shards = assign_shards(tensors, recipe.shard_bytes)
    return plan


def assign_shards(tensors: list[TensorPlan], shard_bytes: int) -> list[ShardPlan]:
    """Greedy packing in plan order; a tensor larger than a shard gets a shard of its own."""
    groups: list[list[TensorPlan]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [ShardPlan("model.safetensors", groups[0])]
    total = len(groups)
    return [
        ShardPlan(f"model-{i + 1:05d}-of-{total:05d}.safetensors", g) for i, g in enumerate(groups)
    ]
