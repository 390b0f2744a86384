"""Describe a checkpoint, and what an expansion of it would produce, from headers alone."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from . import normals
from .checkpoint import open_checkpoint
from .depth import describe
from .errors import HypercloneError
from .families import family_for
from .families.moe import moe_figures
from .hub import resolve_source
from .pipeline import (
    NOISE_AHEAD_ELEMENTS,
    NOISE_CHUNK_ELEMENTS,
    noise_requests,
    verification_mode,
)
from .plan import Plan, make_plan, resolved_tie
from .recipe import Recipe, build_recipe
from .summary import setting_rows
from .writer import BUFFER_COUNT, CHUNK_BYTES, STAGE_BYTES

BASELINE_RSS = 320 * 1024 * 1024  # python + torch + the CLI before any work, measured 302 MB
POOL_BYTES = BUFFER_COUNT * CHUNK_BYTES  # expand's reused chunk buffers in flight
# with noise: float32 temporaries of a noisy chunk and the allocator's slack around them, and
# the NoiseBank's draws ahead (make bench: predicted 670 / 801 MB for measured 663 / 847 MB,
# small model on numpy / large one with numba)
NOISE_BYTES = 16 * 4 * NOISE_CHUNK_ELEMENTS + 4 * NOISE_AHEAD_ELEMENTS
NUMBA_BYTES = 110 * 1024 * 1024  # numba's compiler, loaded where normals.repays_compiled
# verify in streamed mode: transformers' skeletons and the token batch's activations, beyond
# the float32 weights in memory at once (calibrated on benchmarks/results.json: predicted
# 904 / 1115 MB for measured 830 / 1108 MB)
STREAM_OVERHEAD = 100 * 1024 * 1024
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass
class Inspection:
    path: str
    architecture: str
    model_type: str | None
    family: str | None
    format: str
    params: int
    bytes: int
    dtypes: dict[str, int]
    shards: list[dict]
    tied: bool | None
    hidden: int | None = None
    ffn: int | None = None
    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    vocab: int | None = None
    moe: dict | None = None  # experts, top_k, shared_experts, active_params
    expansion: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def inspect(
    path: str | Path,
    factor: int | None = None,
    recipe: Recipe | str | Path | None = None,
    revision: str | None = None,
    **kw,
) -> Inspection:
    """What is at `path` (a directory, or a hub id at `revision`); with `factor` (or a
    recipe), what `expand` would produce."""
    ckpt = open_checkpoint(resolve_source(path, revision))
    cfg = ckpt.config
    archs = cfg.get("architectures") or []
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in ckpt.tensors.values())
    shard_bytes: Counter = Counter()
    for t in ckpt.tensors.values():
        shard_bytes[t.file.name] += t.nbytes
    info = Inspection(
        path=str(path),
        architecture=", ".join(archs) or "unknown",
        model_type=cfg.get("model_type"),
        family=None,
        format=ckpt.format,
        params=sum(t.numel for t in ckpt.tensors.values()),
        bytes=ckpt.total_bytes,
        dtypes=dict(dtypes),
        shards=[{"file": f, "bytes": b} for f, b in sorted(shard_bytes.items())],
        tied=None,
        vocab=cfg.get("vocab_size"),
        moe=moe_figures(cfg, {n: t.numel for n, t in ckpt.tensors.items()}),
    )
    try:
        fam = family_for(cfg)
    except HypercloneError:
        if factor is not None or recipe is not None or _grows(kw):
            raise
        return info
    dims = fam.dims(cfg)
    info.family = fam.name
    info.tied = resolved_tie(cfg, fam)
    info.hidden, info.ffn, info.layers = dims.hidden, dims.ffn, dims.layers
    info.heads, info.kv_heads, info.head_dim = dims.heads, dims.kv_heads, dims.head_dim
    if factor is None and recipe is None and not _grows(kw):
        return info

    recipe = build_recipe(recipe, factor=factor, **kw)
    plan = make_plan(ckpt, recipe)
    mode = verification_mode(recipe, info.params, plan.target_params)
    memory = predict_peak_rss(plan, mode)
    info.expansion = {
        "factor": recipe.factor,
        "ffn_factor": recipe.ffn_multiplier,
        "attention": plan.recipe.attention,  # the plan's: ALiBi or MQA may decide it
        "kv_heads_strategy": plan.recipe.kv_heads,
        "params": plan.target_params,
        "bytes": plan.target_bytes,
        "shards": len(plan.shards),
        "hidden": plan.sizes["hidden"],
        "ffn": plan.sizes["ffn"],
        "heads": plan.sizes["heads"],
        "kv_heads": plan.sizes["kv_heads"],
        "head_dim": plan.sizes["head_dim"],
        "tie": plan.tie,
        "layers": plan.config_layers,
        **(
            {"add_layers": recipe.add_layers, "layer_map": describe(plan.layer_map)}
            if plan.layer_map
            else {}
        ),
        "dtype": recipe.dtype or "/".join(sorted(dtypes)),
        "noise_snr_db": recipe.noise,
        "seed": recipe.seed,
        "settings": dict(setting_rows(plan)),
        "largest_tensor_bytes": plan.largest_tensor_bytes,
        "verify_mode": mode,
        "predicted_expand_rss_bytes": memory["expand"],
        "predicted_verify_rss_bytes": memory["verify"],
        # the whole run as configured: writing, then verifying (if on) in the same process
        "predicted_peak_rss_bytes": max(memory["expand"], memory["verify"]),
        "notes": plan.notes,
        "architecture": ", ".join(plan.config.get("architectures") or []),
        "moe": moe_figures(plan.config, {t.name: t.numel for t in plan.tensors}),
    }
    return info


def predict_peak_rss(plan: Plan, verify_mode: str) -> dict[str, int]:
    """Peak resident memory of `expand` as configured, per phase: writing ("expand") and
    verifying ("verify": 0 when `verify_mode` is "off", else "full" or "streamed")."""
    largest_src = max(t.nbytes for t in plan.source.tensors.values())
    # the interpreter + one source tensor + the chunks in flight (on the benchmark's large
    # checkpoint: measured 479 MB; predicted 479 MB)
    in_flight = POOL_BYTES
    if plan.recipe.noise is not None:
        draws = sum(r.elements for r in noise_requests(plan))
        in_flight = NOISE_BYTES + (NUMBA_BYTES if normals.repays_compiled(draws) else 0)
    expand = BASELINE_RSS + largest_src + in_flight + STAGE_BYTES
    if verify_mode == "full":
        # both models in float32; a half-precision file is cast on load, and part of its
        # stored copy is alive at once (benchmark: predicted 2.3 / 8.4 GB, measured 2.4 / 8.6)
        src_params = sum(t.numel for t in plan.source.tensors.values())
        loaded = 0
        for params, stored in (
            (src_params, plan.source.total_bytes),
            (plan.target_params, plan.target_bytes),
        ):
            loaded += 4 * params + (stored // 2 if stored < 4 * params else 0)
        verify = BASELINE_RSS + loaded
    elif verify_mode == "streamed":
        # one module's weights at a time: the embedding and the head, and the largest layer
        per_layer: Counter = Counter()
        for t in plan.tensors:
            m = _LAYER.search(t.name)
            if m:
                per_layer[m.group(1)] += t.numel
        largest = max(t.numel for t in plan.tensors)
        layer = max(per_layer.values(), default=0)
        verify = BASELINE_RSS + STREAM_OVERHEAD + 4 * (2 * largest + layer)
    else:
        verify = 0
    return {"expand": expand, "verify": verify}


def _grows(kw: dict) -> bool:
    """A growth option was given (layers, experts): inspect predicts its expansion."""
    return any(v is not None for k, v in kw.items() if k != "layer_placement")
