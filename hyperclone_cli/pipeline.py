"""The expansion pipeline: plan → (read → widen → write, one tensor at a time) → verify →
rename. The destination appears only when it is complete and verified (staging.py);
anything else leaves no trace but the error."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import clone, depth, normals
from .checkpoint import Checkpoint, open_checkpoint
from .clone import Noise
from .depth import describe
from .errors import HypercloneError
from .hub import resolve_source
from .modelcard import model_card
from .noise import NoiseBank, Request
from .plan import Plan, TensorPlan, make_plan
from .recipe import Recipe, build_recipe
from .staging import check_destination, staged_output
from .summary import result_rows, setting_rows
from .writer import CHUNK_BYTES, BackgroundWriter, ProgressFn, ShardResult

if TYPE_CHECKING:
    from .verification import VerifyReport

# noisy tensors go the float32 route with a few temporaries per chunk: smaller chunks stay
# in cache (the noise itself is drawn per fixed row block, so the bytes do not depend on it)
NOISE_CHUNK_ELEMENTS = 1 << 22
# unit noise drawn ahead of the widening (a NoiseBank): a few chunks' worth, float32
NOISE_AHEAD_ELEMENTS = NOISE_CHUNK_ELEMENTS


@dataclass
class ExpandResult:
    destination: Path
    plan: Plan
    source_params: int
    dry_run: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    shards: list[ShardResult] = field(default_factory=list)
    verification: VerifyReport | None = None

    def summary(self) -> dict:
        p, r = self.plan, self.plan.recipe
        out = {
            "destination": str(self.destination),
            "source": p.provenance()["source"],
            "dry_run": self.dry_run,
            "family": p.family.name,
            "factor": r.factor,
            "ffn_factor": r.ffn_multiplier,
            "attention": r.attention,
            "kv_heads": r.kv_heads,
            "layout": r.layout,
            "dtype": "/".join(sorted({str(t.dtype).removeprefix("torch.") for t in p.tensors})),
            "noise_snr_db": r.noise,
            "seed": r.seed,
            "source_params": self.source_params,
            "target_params": p.target_params,
            "target_bytes": p.target_bytes,
            "tie": p.tie,
            "shards": [s.__dict__ for s in self.shards] or [s.file for s in p.shards],
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "notes": p.notes,
            "verify_enabled": r.verify,
            "settings": dict(setting_rows(p)),
        }
        if p.layer_map is not None:
            out["layers"] = {
                "source": p.dims.layers,
                "target": len(p.layer_map),
                "map": describe(p.layer_map),
            }
        if self.verification is not None:
            out["verify"] = self.verification.to_dict()
        return out

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (label, value) rows, in the words of the model card."""
        return setting_rows(self.plan) + result_rows(self.summary())


def resolve_device(name: str) -> torch.device:
    """Where to run a model (verify): `auto` is cuda when present."""
    if name == "cuda" and not torch.cuda.is_available():
        raise HypercloneError("--device cuda: CUDA is not available here; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def expand_device(name: str, noise: bool) -> torch.device:
    """Where to widen. `auto` is the CPU for a plain widening: it is block copies, which the
    CPU does at memory speed, while a GPU adds two PCIe crossings per byte for nothing.
    With noise, the GPU (when present) draws the noise and does the float32 arithmetic where
    the weights are (the same bytes as the CPU's)."""
    if name == "auto":
        return resolve_device("auto") if noise else torch.device("cpu")
    return resolve_device(name)


def expand(
    src: str | Path,
    dst: str | Path,
    *,
    recipe: Recipe | str | Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    verify_progress: Callable[[int, int], None] | None = None,
    revision: str | None = None,
    **overrides: object,
) -> ExpandResult:
    """Widen the checkpoint at `src` (a directory, or a hub id at `revision`) into `dst`.

    `recipe` is a Recipe or a YAML path; keyword `overrides` (factor, ffn_factor, attention,
    kv_heads, layout, noise, seed, dtype, tie, verify, verify_tolerance, shard_size, device)
    win over it. `progress(bytes)` follows the writing, `verify_progress(layers, total)` the
    verification (streamed: memory stays about one weight). Raises HypercloneError
    (VerificationError when the check fails) and leaves no `dst` behind on any failure.
    """
    start = time.perf_counter()
    recipe = build_recipe(recipe, **overrides)
    src = resolve_source(src, revision)
    source = open_checkpoint(src)
    # the destination is checked before planning too, so a dry run refuses a bad one
    dst = check_destination(src, dst, force)
    plan = make_plan(source, recipe)
    device = expand_device(recipe.device, recipe.noise is not None)
    if on_plan is not None:
        on_plan(plan)
    source_params = sum(t.numel for t in source.tensors.values())
    result = ExpandResult(dst, plan, source_params, dry_run=dry_run, device=str(device))
    if dry_run:
        return result

    needed = plan.target_bytes + sum(p.stat().st_size for p in source.other_files)
    if recipe.verify:
        from .verification import warm_up

        warm_up(src)  # transformers' imports, meanwhile
    with staged_output(src, dst, force=force, needed_bytes=needed) as stage:
        try:
            keep = recipe.verify and read_back_from_memory(plan.target_bytes)
            result.shards = write_shards(plan, source, stage.tmp, device, progress, keep)
        finally:
            source.close()  # drop the .bin cache before verify loads two models
        write_metadata(plan, source, stage.tmp)
        report = None
        if recipe.verify:
            from .verification import verify

            mode = verification_mode(recipe, source_params, plan.target_params)
            report = verify(
                src,
                stage.tmp,
                tolerance=recipe.verify_tolerance,
                streamed=None if mode == "streamed" else False,
                device=str(resolve_device(recipe.device)),
                progress=verify_progress,
            )
            result.verification = report
            report.raise_if_failed("; nothing was written")
        (stage.tmp / "README.md").write_text(model_card(plan, result.shards, report))
        stage.commit()
    result.seconds = time.perf_counter() - start
    return result


def verification_mode(recipe: Recipe, source_params: int, target_params: int) -> str:
    """How expand verifies: "off" or "streamed" (one module's weights at a time, so the
    memory stays about expand's own; verify falls back to "full" only for a model that
    cannot be streamed). inspect predicts memory from the same answer."""
    return "streamed" if recipe.verify else "off"


# the share of the available memory that the written files may take in the page cache for
# the verification to read them back from there
READ_BACK_FRACTION = 0.5


def read_back_from_memory(target_bytes: int) -> bool:
    """Whether the files being written can stay in the page cache until verification reads
    them back (re-reading a third of SmolLM2 x2's from the disk took ~2 s here); a larger
    target would only push out other files' pages, and its first layers' too."""
    import psutil

    return target_bytes <= READ_BACK_FRACTION * psutil.virtual_memory().available


def write_shards(
    plan: Plan,
    source: Checkpoint,
    out_dir: Path,
    device: torch.device,
    progress: ProgressFn | None = None,
    keep_cached: bool = False,
) -> list[ShardResult]:
    """Stream every tensor of the plan from `source` into safetensors shards in `out_dir`.
    `keep_cached`: leave the written pages in the page cache, for a verification next."""
    recipe = plan.recipe
    noise = Noise(recipe.noise, recipe.seed) if recipe.noise is not None else None
    order = [t.source for s in plan.shards for t in s.tensors if not t.zero and t.init is None]
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(_compute_threads(threads))
    try:
        # reused chunk buffers: the CPU computes into them; a GPU's chunks are copied into
        # them (pinned) on a side stream while it computes the next ones
        on_gpu = device.type == "cuda"
        with (
            noise_bank(plan, device) as bank,
            BackgroundWriter(
                out_dir, pooled=True, pinned=on_gpu, progress=progress, keep_cached=keep_cached
            ) as writer,
        ):
            for shard in plan.shards:
                writer.start_shard(shard.file, [t.entry for t in shard.tensors])
                for t in shard.tensors:
                    if t.zero and t.init is None:  # a new block's residual writer: unread
                        for chunk in depth.zeros(t, _chunk_elements(t), writer.alloc):
                            writer.write(chunk)
                        continue
                    if t.init is not None:  # generated (upcycling's routers)
                        w = t.generate(recipe.seed).to(device)
                    else:
                        w = source.read(t.source, device)
                        order.pop(0)
                        if order:
                            source.prefetch(order[0])  # read from disk while this one widens
                    chunks = clone.widen(
                        w,
                        t.axes,
                        scale=t.scale,
                        offset=t.role.norm_offset,
                        diagonal=t.diagonal,
                        noise=noise if t.noise else None,
                        tensor_seed=t.tensor_seed(recipe.seed),
                        out_dtype=t.dtype,
                        max_chunk_elements=_chunk_elements(t),
                        alloc=None if on_gpu else writer.alloc,
                        bank=bank,
                    )
                    if t.block_noise:
                        chunks = depth.with_block_noise(chunks, w, t, recipe.noise, recipe.seed)
                    for chunk in chunks:
                        writer.write(chunk)
                    del w
                writer.end_shard()
            return writer.finish()
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def noise_bank(plan: Plan, device: torch.device) -> Iterator[NoiseBank | None]:
    """With noise on the CPU: the unit draws of every noisy tensor, in plan order, made
    ahead in a background thread (NOISE_AHEAD_ELEMENTS at most), so they overlap reads and
    writes. (A GPU draws its noise itself, where it adds it.)"""
    requests = noise_requests(plan) if device.type == "cpu" else []
    if not requests:
        yield None
        return
    normals.warm_compiled(sum(r.elements for r in requests))
    with NoiseBank(requests, NOISE_AHEAD_ELEMENTS) as bank:
        yield bank


def noise_requests(plan: Plan) -> list[Request]:
    """Every unit-noise draw the run will make on the CPU, in plan order."""
    if plan.recipe.noise is None:
        return []
    seed = plan.recipe.seed
    return [
        r
        for s in plan.shards
        for t in s.tensors
        if t.noise and not (t.zero and t.init is None)
        for r in clone.noise_requests(t.axes, t.tensor_seed(seed), _chunk_elements(t))
    ]


def write_metadata(plan: Plan, source: Checkpoint, out_dir: Path) -> None:
    """The index (when sharded), the widened config, and the source's other files."""
    if len(plan.shards) > 1:
        index = {
            "metadata": {"total_size": plan.target_bytes},
            "weight_map": {t.name: s.file for s in plan.shards for t in s.tensors},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
    for f in source.other_files:
        if f.name.lower() == "readme.md":
            continue  # replaced by our model card
        shutil.copy2(f, out_dir / f.name)


def _chunk_elements(t: TensorPlan) -> int:
    """How much of a target tensor to compute at a time: a writer buffer's worth, on any
    device (a GPU's chunk k+1 is computed while chunk k crosses to the host and k-1 is
    written)."""
    if t.noise:
        return NOISE_CHUNK_ELEMENTS
    return CHUNK_BYTES // t.dtype.itemsize


def _compute_threads(threads: int) -> int:
    """Leave a core to the writer thread (hashing, write syscalls): with every core in
    torch's pool, its threads wait on the writer and each op runs several times slower."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, min(threads, cores - 1))
