"""The expansion pipeline: plan → (read → widen → write, one tensor at a time) → verify →
rename. The destination appears only when it is complete and verified; anything else
leaves no trace but the error."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import clone
from .checkpoint import ShardWriter, check_written_shard, open_checkpoint
from .clone import Noise
from .errors import (
    EXIT_IO,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    HypercloneError,
    Interrupted,
)
from .plan import Plan, make_plan
from .recipe import Recipe, load_recipe

ProgressFn = Callable[[int], None]
CHUNK_BYTES = 16 * 1024 * 1024  # target bytes computed and written at a time
NOISE_CHUNK_ELEMENTS = 1 << 24  # fixed: the noise drawn per chunk depends on it
WRITER_DEPTH = 3  # chunks computed ahead of the disk
DISK_MARGIN = 0.01  # of the output, plus 1 MiB: file-system blocks, index, card


@dataclass
class ShardResult:
    file: str
    bytes: int
    sha256: str


@dataclass
class ExpandResult:
    destination: Path
    plan: Plan
    dry_run: bool = False
    seconds: float = 0.0
    bytes_written: int = 0
    device: str = "cpu"
    shards: list[ShardResult] = field(default_factory=list)
    verification: object | None = None  # VerifyReport when verified

    def summary(self) -> dict:
        p = self.plan
        out = {
            "destination": str(self.destination),
            "dry_run": self.dry_run,
            "family": p.family.name,
            "factor": p.recipe.n,
            "ffn_factor": p.recipe.m,
            "source_params": sum(t.numel for t in p.source.tensors.values()),
            "target_params": p.target_params,
            "target_bytes": p.target_bytes,
            "tie": p.tie,
            "shards": [s.__dict__ for s in self.shards] or [s.file for s in p.shards],
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "notes": p.notes,
        }
        if self.verification is not None:
            out["verify"] = self.verification.to_dict()
        return out


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise HypercloneError("--device cuda: CUDA is not available here; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_paths(src: Path, dst: Path, force: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if d == s:
        raise HypercloneError(f"{dst}: destination is the source; choose another directory")
    if s in d.parents:
        raise HypercloneError(f"{dst}: destination is inside the source; choose another directory")
    if d in s.parents:
        raise HypercloneError(f"{dst}: destination contains the source; choose another directory")
    if dst.exists() and not force:
        raise HypercloneError(f"{dst}: already exists; pass --force to replace it")
    if dst.exists() and not dst.is_dir():
        raise HypercloneError(f"{dst}: exists and is not a directory; remove it or choose another")
    if dst.exists() and any(dst.iterdir()) and not (dst / "config.json").is_file():
        raise HypercloneError(
            f"{dst}: --force replaces only a checkpoint (a directory with config.json) or an "
            "empty directory; this one is neither, so remove it yourself or choose another"
        )
    parent = d.parent
    if not parent.is_dir():
        raise HypercloneError(f"{parent}: destination's parent directory does not exist; create it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HypercloneError(
            f"{parent}: not writable (permission denied); choose a destination you can write to",
            code=EXIT_IO,
        )


def _check_space(plan: Plan, parent: Path) -> None:
    other = sum(p.stat().st_size for p in plan.source.other_files)
    need = plan.target_bytes + other
    need += int(need * DISK_MARGIN) + 2**20
    free = shutil.disk_usage(parent).free
    if need > free:
        raise HypercloneError(
            f"{parent}: not enough disk space: the output needs {format_size(need)}, "
            f"{format_size(free)} free; free some space or choose another destination",
            code=EXIT_IO,
        )


def format_size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def os_error_message(e: OSError, dst: Path) -> str:
    """One line for a failed write under dst that says what to do about it."""
    where = Path(e.filename).name if e.filename else "the output"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full; free some space or choose another destination"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"{e.strerror}; choose a destination you can write to"
    else:
        hint = e.strerror or str(e)
    return f"{dst}: cannot write {where}: {hint}; nothing was left behind"


class _Writer:
    """A background thread that writes chunks while the next ones are computed."""

    def __init__(self, depth: int = 3) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="hyperclone-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None and not self._cancelled:
                try:
                    job()
                except BaseException as e:  # re-raised in the main thread
                    self._error = e

    def submit(self, job: Callable[[], None]) -> None:
        self.check()
        self._q.put(job)

    def check(self) -> None:
        """Re-raise, in the calling thread, what made the writer fail."""
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Drop queued chunks and wait only for the one being written (after Ctrl-C, ENOSPC)."""
        self._cancelled = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join()


class _Buffers:
    """Chunk memory reused round-robin: a written chunk's buffer holds a later one, so its
    pages are not faulted in and zeroed again for every chunk (a sixth of expand's CPU
    time), and the memory in flight is bounded. Larger chunks get memory of their own."""

    def __init__(self, count: int, nbytes: int, writer: _Writer) -> None:
        self._nbytes = nbytes
        self._writer = writer
        self._free: queue.Queue = queue.Queue()
        self._owner: dict[int, torch.Tensor] = {}
        for _ in range(count):
            buf = torch.empty(nbytes, dtype=torch.uint8)  # pages arrive on first use
            self._owner[buf.data_ptr()] = buf
            self._free.put(buf)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape) * dtype.itemsize
        if n > self._nbytes:
            return torch.empty(shape, dtype=dtype)
        while True:  # the writer hands buffers back; if it failed, say why instead of waiting
            try:
                buf = self._free.get(timeout=0.2)
                break
            except queue.Empty:
                self._writer.check()
        return buf[:n].view(dtype).view(shape)

    def give(self, chunk: torch.Tensor) -> None:
        buf = self._owner.get(chunk.untyped_storage().data_ptr())
        if buf is not None:
            self._free.put(buf)


_deferred: dict = {"on": False}  # set while dst is being renamed into place


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into exceptions so cleanup runs; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if _deferred["on"]:
            _deferred["signum"] = signum
            return
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def write_plan(
    plan: Plan, out_dir: Path, device: torch.device, progress: ProgressFn | None = None
) -> list[ShardResult]:
    """Stream every tensor of the plan into safetensors shards in `out_dir`."""
    recipe = plan.recipe
    noise = Noise(recipe.noise, recipe.seed) if recipe.noise is not None else None
    results: list[ShardResult] = []
    opened: list[ShardWriter] = []
    order = [t.source for s in plan.shards for t in s.tensors]
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(_compute_threads(threads))
    writer = _Writer(WRITER_DEPTH)
    # one chunk being computed, one being written, WRITER_DEPTH waiting
    buffers = _Buffers(WRITER_DEPTH + 2, CHUNK_BYTES, writer) if device.type == "cpu" else None
    try:
        for shard in plan.shards:
            entries = [t.entry for t in shard.tensors]
            sw = ShardWriter(out_dir / shard.file, entries, {"format": "pt"})
            opened.append(sw)
            for t in shard.tensors:
                w = plan.source.read(t.source, device)
                order.pop(0)
                if order:
                    plan.source.prefetch(order[0])  # read from disk while this one widens
                for chunk in clone.widen(
                    w,
                    t.axes,
                    scale=t.scale,
                    offset=t.role.norm_offset,
                    diagonal=t.diagonal,
                    noise=noise if t.noise else None,
                    tensor_seed=t.tensor_seed(recipe.seed),
                    out_dtype=t.dtype,
                    max_chunk_elements=_chunk_elements(t, device),
                    alloc=buffers.take if buffers is not None else None,
                ):
                    writer.submit(lambda c=chunk, sw=sw: _write(sw, c, progress, buffers))
                del w
            writer.submit(lambda sw=sw, s=shard: results.append(_close(sw, s)))
        writer.finish()
    except BaseException:
        writer.cancel()
        for sw in opened:
            sw.abort()
        raise
    finally:
        plan.source.close()
        torch.set_num_threads(threads)
    return results


def _chunk_elements(t, device: torch.device) -> int:
    """How much of a target tensor to compute at a time."""
    if t.noise:
        return NOISE_CHUNK_ELEMENTS  # noise is drawn per chunk: part of the seeded bytes
    if device.type != "cpu":
        # one chunk per tensor: one device-to-host copy per tensor (device memory holds a
        # target tensor easily; the host still sees only that tensor)
        return max(1, t.numel)
    return CHUNK_BYTES // t.dtype.itemsize


def _compute_threads(threads: int) -> int:
    """Leave a core to the writer thread (hashing, write syscalls): with every core in
    torch's pool, its threads wait on the writer and each op runs several times slower."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, min(threads, cores - 1))


def _write(
    sw: ShardWriter, chunk: torch.Tensor, progress: ProgressFn | None, buffers: _Buffers | None
) -> None:
    try:
        sw.write(chunk)
    finally:
        if buffers is not None:
            buffers.give(chunk)
    if progress is not None:
        progress(chunk.numel() * chunk.element_size())


def _close(sw: ShardWriter, shard) -> ShardResult:
    digest = sw.close()
    check_written_shard(sw.path, [t.entry for t in shard.tensors], sw.expected)
    return ShardResult(shard.file, sw.expected, digest)


def _write_metadata(plan: Plan, out_dir: Path, shards: list[ShardResult]) -> None:
    if len(plan.shards) > 1:
        index = {
            "metadata": {"total_size": plan.target_bytes},
            "weight_map": {t.name: s.file for s in plan.shards for t in s.tensors},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
    for f in plan.source.other_files:
        if f.name.lower() == "readme.md":
            continue  # replaced by our model card
        shutil.copy2(f, out_dir / f.name)


def model_card(plan: Plan, shards: list[ShardResult], report: object | None) -> str:
    prov = plan.provenance()
    lines = [
        "---",
        "tags: [hyperclone, hypercloning]",
        "---",
        f"# Widened ×{plan.recipe.n} with hyperclone",
        "",
        f"This checkpoint was made from `{prov['source']}` by {prov['tool']} with "
        "HyperCloning (Samragh et al., arXiv 2409.12903): every hidden vector is cloned "
        f"{plan.recipe.n} times, so the model computes the same function as its source.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in prov.items()]
    lines += [
        f"| parameters | {plan.target_params:,} |",
        f"| bytes | {plan.target_bytes:,} |",
        "",
    ]
    if report is not None:
        d = report.to_dict()
        lines += ["## Verification", "", "| figure | value |", "|---|---|"]
        shown = ("mode", "max_abs_diff", "rel_error", "kl", "top1_agreement", "tolerance", "passed")
        lines += [f"| {k} | {v} |" for k, v in d.items() if k in shown]
        lines.append("")
    else:
        lines += ["Not verified (`--no-verify`).", ""]
    lines += ["## Files", "", "| shard | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {s.file} | {s.bytes:,} | `{s.sha256}` |" for s in shards]
    for note in plan.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def expand(
    src: str | Path,
    dst: str | Path,
    *,
    recipe: Recipe | str | Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    **overrides: object,
) -> ExpandResult:
    """Widen the checkpoint at `src` into `dst`.

    `recipe` is a Recipe or a YAML path; keyword `overrides` (factor, ffn_factor, attention,
    kv_heads, layout, noise, seed, dtype, tie, verify, verify_tolerance, shard_size, device)
    win over it. Raises HypercloneError (VerificationError when the check fails) and leaves
    no `dst` behind on any failure.
    """
    start = time.perf_counter()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, **overrides)
    elif overrides:
        recipe = recipe.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    src, dst = Path(src), Path(dst)
    if dst.name in ("", ".", ".."):  # the temporary directory is named after dst
        dst = Path(os.path.abspath(dst))
    ckpt = open_checkpoint(src)
    check_paths(src, dst, force)
    plan = make_plan(ckpt, recipe)
    device = resolve_device(recipe.device)
    if on_plan is not None:
        on_plan(plan)
    if dry_run:
        return ExpandResult(dst, plan, dry_run=True, device=str(device))
    _check_space(plan, dst.resolve().parent)

    _remove_stale(dst)
    tmp = dst.parent / f".{dst.name}.hyperclone-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result = ExpandResult(dst, plan, device=str(device))
    try:
        with _signals_raise():
            try:
                tmp.mkdir()
                result.shards = write_plan(plan, tmp, device, progress)
                _write_metadata(plan, tmp, result.shards)
                report = None
                if recipe.verify:
                    from .verify import verify

                    report = verify(src, tmp, tolerance=recipe.verify_tolerance, device=str(device))
                    result.verification = report
                    report.raise_if_failed("; nothing was written")
                (tmp / "README.md").write_text(model_card(plan, result.shards, report))
                _move_into_place(tmp, dst, force)
            except KeyboardInterrupt as e:
                raise Interrupted(signal.SIGINT) from e
            except OSError as e:
                raise HypercloneError(os_error_message(e, dst), code=EXIT_IO) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.bytes_written = sum(s.bytes for s in result.shards)
    result.seconds = time.perf_counter() - start
    return result


def _remove_stale(dst: Path) -> None:
    """Remove what a killed run (SIGKILL, power loss) left beside dst: `.DST.hyperclone-PID.*`
    of processes that no longer exist. A live PID's directory is left alone."""
    for p in dst.parent.glob(f".{glob.escape(dst.name)}.hyperclone-*"):
        pid = p.name.removeprefix(f".{dst.name}.hyperclone-").split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
            # a `.old` is a previous DST that a killed --force run was swapping out: keep it
        except OSError:
            pass  # alive under another user


def _move_into_place(tmp: Path, dst: Path, force: bool) -> None:
    """Rename the finished directory to dst; an old dst (--force) is swapped out only now.
    SIGINT/SIGTERM wait until both renames are done, so dst is never left half-swapped."""
    if dst.exists() and not force:
        raise HypercloneError(f"{dst}: appeared while expanding; pass --force to replace it")
    _deferred["on"] = True
    try:
        if dst.exists():
            old = dst.parent / f".{dst.name}.hyperclone-{os.getpid()}.old"
            os.rename(dst, old)
            try:
                os.rename(tmp, dst)
            except OSError:
                os.rename(old, dst)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dst)
    finally:
        _deferred["on"] = False
    signum = _deferred.pop("signum", None)
    if signum is not None:
        name = signal.Signals(signum).name
        raise HypercloneError(
            f"interrupted by {name} after {dst} was complete and in place; it is kept",
            code=EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM,
        )
