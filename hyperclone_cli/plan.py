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
from .checkpoint import FLOAT_DTYPES, TORCH_TO_ST, Checkpoint
from .clone import AxisMap, identity_map, interleave_map, tile_map
from .depth import LayerMap, deepen, deepened_config, plan_layer_map
from .errors import HypercloneError
from .families import IN, OUT, Dims, Family, Role, family_for
from .families.base import head as head_role
from .hub import source_label
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
    zero: bool = False  # a new block's residual writer (depth.py): zeros, the source unread
    block_noise: bool = False  # a new block's other weight matrix: noise keeps the function
    # made, not read: ("zeros", 0) or ("normal", std) at the target shape (upcycle.py)
    init: tuple[str, float] | None = None

    def generate(self, seed: int) -> torch.Tensor:
        """The tensor of a generated plan, seeded by the run's seed and its name."""
        kind, std = self.init
        if kind == "zeros":
            return torch.zeros(self.shape, dtype=self.dtype)
        g = torch.Generator().manual_seed(self.tensor_seed(seed))
        return (torch.randn(self.shape, generator=g) * std).to(self.dtype)

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
    layer_map: LayerMap | None = None  # with --add-layers: target layer → source, None new

    @property
    def target_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def target_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def config_layers(self) -> int:
        """The target's decoder layer count."""
        return len(self.layer_map) if self.layer_map is not None else self.dims.layers

    @property
    def largest_tensor_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors), default=0)

    def provenance(self) -> dict:
        r = self.recipe
        return {
            "tool": f"hyperclone {__version__}",
            "method": "HyperCloning (arXiv 2409.12903)",
            "source": source_label(self.source.path),
            "factor": r.factor,
            "ffn_factor": r.ffn_multiplier,
            "attention": r.attention,
            "kv_heads": r.kv_heads,
            "layout": r.layout,
            "dtype": r.dtype or "source",
            "noise_snr_db": r.noise,
            "noise_generator": NOISE_VERSION if r.noise is not None else None,
            "seed": r.seed,
            "tie": self.tie,
            **(self.depth_provenance() if self.layer_map is not None else {}),
        } | ({"experts": r.experts, "top_k": r.experts_per_token} if r.experts else {})

    def depth_provenance(self) -> dict:
        """The layer map as config.json records it: verify reads it to check new blocks."""
        return {
            "add_layers": self.recipe.add_layers,
            "layer_placement": self.recipe.layer_placement,
            "layer_map": [s if s is not None else "new" for s in self.layer_map or []],
        }


def resolved_tie(config: dict, family: Family) -> bool:
    """tie_word_embeddings as transformers would read it (config classes have defaults)."""
    if not family.ties:
        return False
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
        "ffn_half": tile_map(dims.ffn // 2, m),  # Moshi: ffn_dim counts gate and up together
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
    sizes_heads = {"heads": heads, "kv_heads": kv, "head_dim": head_dim}
    # one entry per head (attention sinks, Cohere's (heads, head_dim) q/k norms, CPM-Ant's
    # relative position bias): the head order of the q and kv maps, read at the first
    # index of each target head
    maps["heads"] = maps["q"][::head_dim] // hd
    maps["kv_heads"] = maps["kv"][::head_dim] // hd
    maps["qkv"], maps["qkv:q"] = _grouped_qkv(maps, dims, sizes_heads)
    maps["qvk4"], maps["qvk4:q"] = _codegen_qvk(maps, dims)
    # norms over one head (Qwen3, Gemma 3 q/k norms): only head-dim attention widens a head
    maps["head"] = tile_map(hd, n) if recipe.attention == "head-dim" else identity_map(hd)
    # differential attention (DiffLlama) subtracts head H/2 + i from head i: heads are
    # copied within their half, so the pairs stay aligned (head replication only)
    maps["q_halves"] = _tile_halves(H * hd, n)
    maps["kv_halves"] = _tile_halves(G * hd, n)
    sizes = {
        "hidden": n * dims.hidden,
        "embed": n * dims.embed,
        "ffn": m * dims.ffn,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
    }
    return maps, sizes


def _tile_halves(size: int, n: int) -> torch.Tensor:
    half = size // 2
    return torch.cat([tile_map(half, n), tile_map(half, n) + half])


def _grouped_qkv(maps: dict, dims: Dims, sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
    """Fused projection laid out per k/v group `[q_g,0 … q_g,r-1  k_g  v_g]` (GPT-NeoX,
    Bloom, Persimmon: one query head per group; Falcon 40B: r = H/G). Every target slot reads
    the source row its q or k/v map names, so heads tile, sit side by side (kept k/v) or
    grow (head-dim) as in the unfused projections. Returns the map and its q rows."""
    H, G, hd = dims.heads, dims.kv_heads, dims.head_dim
    r, hd2, G2 = H // G, sizes["head_dim"], sizes["kv_heads"]
    r2 = sizes["heads"] // G2
    g, slot, e = torch.meshgrid(
        torch.arange(G2), torch.arange(r2 + 2), torch.arange(hd2), indexing="ij"
    )
    qi = maps["q"][((g * r2 + slot.clamp(max=r2 - 1)) * hd2 + e)]
    ki = maps["kv"][g * hd2 + e]
    q_row = (qi // hd // r) * (r + 2) * hd + (qi // hd % r) * hd + qi % hd
    kv_row = (ki // hd) * (r + 2) * hd + (r + slot - r2) * hd + ki % hd
    is_q = slot < r2
    return torch.where(is_q, q_row, kv_row).reshape(-1), is_q.reshape(-1)


def _codegen_qvk(maps: dict, dims: Dims, mp: int = 4) -> tuple[torch.Tensor, ...]:
    """CodeGen's qkv_proj: `mp` model-parallel blocks, each `[q_j | v_j | k_j]` of D/mp rows,
    q = [q_0 … q_mp-1] (likewise v, k). Block j of the target holds the j-th slice of the
    widened q, v, k, read through their maps. Returns the map and its q rows."""
    D, D2 = dims.heads * dims.head_dim, maps["q"].numel()
    if D % mp or D2 % mp or maps["kv"].numel() != D2:  # no GQA in CodeGen
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.bool)
    L, L2 = D // mp, D2 // mp
    j, part, t = torch.meshgrid(torch.arange(mp), torch.arange(3), torch.arange(L2), indexing="ij")
    u = j * L2 + t
    src = torch.where(part == 0, maps["q"][u], maps["kv"][u])
    rows = (src // L) * 3 * L + part * L + src % L
    return rows.reshape(-1), (part == 0).reshape(-1)


def _axis(space, side: str, size: int, maps: dict[str, torch.Tensor], name: str, k: int) -> AxisMap:
    parts = space if isinstance(space, tuple) else (space,)
    if parts == ("fixed",):
        return AxisMap(identity_map(size), size, side)
    if parts == ("q_head_blocks",):  # MLA: rows per query head of any width, heads copied
        heads = maps["heads"]
        count = int(heads.max()) + 1
        if size % count:
            raise HypercloneError(
                f"tensor {name}: axis {k} has size {size}, not a multiple of {count} heads"
            )
        block = size // count
        return AxisMap((heads[:, None] * block + torch.arange(block)).reshape(-1), size, side)
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
    if not any(p == "q" or p + ":q" in maps for p in parts):
        return axis
    scale = []
    for p in parts:
        is_q = maps[p + ":q"] if p + ":q" in maps else torch.full(maps[p].shape, p == "q")
        scale.append(torch.where(is_q, q_scale, 1.0))
    return replace(axis, scale=torch.cat(scale))


def _attention_for(family: Family, cfg: dict, recipe: Recipe) -> tuple[Recipe, list[str]]:
    """The attention options this config allows: ALiBi needs head-dim attention, a
    multi-query flag keeps its one k/v head. Options the user set are refused, not changed."""
    chosen = recipe.model_fields_set
    notes = []
    alibi = family.alibi(cfg) if family.alibi else None
    if alibi and recipe.attention != "head-dim":
        if "attention" in chosen:
            raise HypercloneError(
                f"--attention heads is not exact for {family.name}: {alibi}; "
                "use --attention head-dim"
            )
        recipe = recipe.model_copy(update={"attention": "head-dim"})
        notes.append(f"attention widened per head (head-dim): {alibi}")
    mqa = family.mqa is not None and family.mqa(cfg)
    if mqa and recipe.attention == "heads" and recipe.kv_heads != "keep":
        if "kv_heads" in chosen:
            raise HypercloneError(
                f"--kv-heads replicate is not possible for {family.name}: config.json sets "
                "multi-query attention (one key/value head); use --kv-heads keep"
            )
        recipe = recipe.model_copy(update={"kv_heads": "keep"})
        notes.append("multi-query attention: its one key/value head is kept")
    return recipe, notes


def _head_copies(t: TensorPlan, family: Family, maps: dict) -> list[TensorPlan]:
    """A tensor of one head, named by its index (StableLM's `q_layernorm.norms.<h>`): one
    target per target head that copies it, named by the target head's index."""
    pattern = next(p for p, role in family.tensors if re.fullmatch(p, t.name))
    match = re.fullmatch(pattern, t.name)
    h, (start, end) = int(match["head"]), match.span("head")
    heads = maps["heads" if t.role.per_head == "q" else "kv_heads"]
    targets = (heads == h).nonzero().flatten().tolist()
    return [replace(t, name=t.name[:start] + str(j) + t.name[end:]) for j in targets]


def make_plan(ckpt: Checkpoint, recipe: Recipe) -> Plan:
    cfg = ckpt.config
    family = family_for(cfg)
    dims = family.dims(cfg)
    n = recipe.factor
    recipe, forced = _attention_for(family, cfg, recipe)
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
    for space, size in family.ffn_space_sizes(cfg).items():  # MoE experts, shared experts
        maps[space] = tile_map(size, recipe.ffn_multiplier)
    lmap = None
    if recipe.add_layers:
        lmap = plan_layer_map(family, cfg, dims.layers, recipe.add_layers, recipe.layer_placement)
    tied = resolved_tie(cfg, family)
    notes: list[str] = list(forced)
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
        if info.dtype not in FLOAT_DTYPES and info.dtype.is_floating_point:  # float8
            raise HypercloneError(
                f"{info.file}: tensor {name} has dtype {TORCH_TO_ST[info.dtype]}, which "
                "hyperclone cannot handle"
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
            unscaled = family.unscaled is not None and family.unscaled(cfg)
            q_scale = 1 / n if unscaled else 1 / math.sqrt(n)  # no 1/√head_dim to shrink
            axes = tuple(
                _scale_q(a, sp, maps, q_scale) for a, (sp, _) in zip(axes, role.axes, strict=True)
            )
        if re.fullmatch(family.embedding_name, name):
            embedding_source = name
            scale *= embed_mult
        if name in keepers and tie == "kept":
            scale *= tie_scale
        scale *= math.prod(f(n) for p, f in family.scaled if re.fullmatch(p, name))
        widened_in = any(a.side == IN and a.widened for a in axes)
        widened_out = any(a.side == OUT and a.widened for a in axes)
        planned = TensorPlan(
            name=name,
            source=name,
            role=role,
            axes=axes,
            dtype=out_dtype or info.dtype,
            scale=scale,
            noise=recipe.noise is not None and widened_in and role.noisy,
            diagonal=recipe.layout == "diagonal" and widened_in and widened_out,
        )
        tensors += _head_copies(planned, family, maps) if role.per_head else [planned]
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

    if lmap is not None:
        tensors = deepen(tensors, family, lmap, noise=recipe.noise is not None)
    config = copy.deepcopy(cfg)
    config.update(family.widened_config(cfg, sizes))
    for _, key, _ in family.ffn_spaces:
        if cfg.get(key):
            config[key] = cfg[key] * recipe.ffn_multiplier
    if lmap is not None:
        config.update(deepened_config(cfg, family, lmap))
    if tie == "untied":
        config["tie_word_embeddings"] = False
    if recipe.dtype:
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = recipe.dtype
        if "torch_dtype" not in config and "dtype" not in config:
            config["dtype"] = recipe.dtype
    plan = Plan(ckpt, family, recipe, dims, sizes, config, tensors, dropped, tie, notes)
    plan.layer_map = lmap
    if recipe.experts:
        from .upcycle import upcycle

        upcycle(plan)  # dense → MoE: experts, routers, config.json
    plan.config["hyperclone"] = plan.provenance()
    plan.shards = assign_shards(plan.tensors, recipe.shard_bytes)
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
