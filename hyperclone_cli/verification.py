"""Check that a widened checkpoint computes the same function as its source.

Both checkpoints run the same deterministic token batch in float32 and their logits are
compared: max |Δlogit|, the same relative to max |logit|, KL(p_src || p_dst) per token and
top-1 agreement. Comparing logits (not only generated text) is what catches a head that
lost its 1/n: such a model still generates the same greedy text with logits n× too large.

This module holds the report, the tolerance and `verify()`, which checks both checkpoints
with the same reader as `expand` (so a corrupt or hostile file is refused the same way,
before transformers sees it) and picks one of two ways to run the models:

- `verify_streamed` (the default): one module's weights at a time, so memory stays about
  the largest weight whatever the model's size, and each decoder layer compared on its own.
- `verify_full`: transformers loads each model whole, one after the other; also compares
  a greedy continuation. Used where a model cannot be streamed (a module that uses weights
  it does not own, tensors that transformers merges on load), or when asked for.

Both report progress in decoder layers run (source's, then the widened model's).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn

from hyperclone_cli.checkpoint import Checkpoint, open_checkpoint
from hyperclone_cli.errors import HypercloneError, VerificationError

# Default tolerances on the relative logit error, by the destination's stored dtype.
# Measured on tiny and 6-layer Llamas widened x2 (rel error = max |Δlogit| / max |logit|):
# - float32, exact or with symmetric noise: ~1e-6 (summation order only).
# - bfloat16: 2e-3 - 4e-3 with noise (W/n ± η no longer cancel after rounding), up to 8e-3
#   for an fp32 source stored as bf16; float16: below 1e-3.
# - wrong widenings: a lost or doubled 1/n gives 1.0, noise that does not cancel 0.5 - 0.6.
# 3e-2 sits between the two for any weight narrower than 32 bits.
TOLERANCE_FP32 = 1e-4
TOLERANCE_HALF = 3e-2

# Full mode, where streaming cannot run a model, only when both models in float32 take
# less than this share of the memory available now.
STREAM_MEMORY_FRACTION = 0.6

# progress(layers run, layers in all): the source's decoder layers, then the widened model's
VerifyProgress = Callable[[int, int], None]


class CannotStream(HypercloneError):
    """Streamed mode cannot run this model; full mode can."""


@dataclass
class LayerCheck:
    """One decoder layer of the wide model against the n-fold clone of the source's."""

    index: int
    max_abs_diff: float
    rel_error: float
    passed: bool


@dataclass
class VerifyReport:
    max_abs_diff: float  # max |logit_src - logit_dst| over the batch
    rel_error: float  # max_abs_diff / max |logit_src|
    kl: float  # mean KL(p_src || p_dst) per token
    top1_agreement: float  # fraction of positions with the same argmax
    greedy_match: bool | None  # None in streamed mode (no generation there)
    tolerance: float
    passed: bool
    n_tokens: int
    mode: str  # "full" or "streamed"
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    layers: list[LayerCheck] = field(default_factory=list)  # streamed mode only
    first_bad_layer: int | None = None
    layer_prefix: str | None = None  # e.g. "model.layers", to name a bad layer's weights

    def summary(self) -> str:
        """One line: the figures if it passed, otherwise the first reason it failed."""
        figures = (
            f"max |Δlogit| {self.max_abs_diff:.3g}, rel error {self.rel_error:.3g} "
            f"(tolerance {self.tolerance:g}), KL {self.kl:.3g}, "
            f"top-1 agreement {self.top1_agreement:.1%} over {self.n_tokens} tokens"
        )
        if self.passed:
            return f"match: {figures}"
        if self.missing_keys or self.unexpected_keys:
            parts = []
            if self.missing_keys:
                parts.append(f"missing {preview(self.missing_keys)}")
            if self.unexpected_keys:
                parts.append(f"unexpected {preview(self.unexpected_keys)}")
            return f"destination weights do not fit its architecture: {'; '.join(parts)}"
        if self.first_bad_layer is not None:
            bad = self.layers[self.first_bad_layer]
            where = f": {self.layer_prefix}.{bad.index}.*" if self.layer_prefix else ""
            return (
                f"layer {bad.index} diverged (rel error {bad.rel_error:.3g}){where}; "
                f"logits: {figures}"
            )
        if self.layers:
            # Every layer matched, so the error is after the last one.
            return (
                "logits differ though every decoder layer matches "
                f"(check the final norm and lm_head): {figures}"
            )
        return f"logits differ: {figures}"

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    def raise_if_failed(self, then: str = "") -> None:
        """Raise VerificationError with the summary; `then` says what the caller did about it."""
        if not self.passed:
            raise VerificationError(f"verification failed: {self.summary()}{then}", report=self)


def verify(
    src: str | Path,
    dst: str | Path,
    *,
    tolerance: float | None = None,
    streamed: bool | None = None,
    batch_size: int = 1,
    seq_len: int = 32,
    seed: int = 0,
    device: str = "cpu",
    revision: str | None = None,
    progress: VerifyProgress | None = None,
) -> VerifyReport:
    """Run one token batch through `src` and its widened `dst`; compare the logits.

    `tolerance` bounds the relative logit error (max |Δlogit| / max |logit_src|); by default
    it follows the destination's stored dtype: `TOLERANCE_FP32` (1e-4) for float32,
    `TOLERANCE_HALF` (3e-2) for bfloat16/float16 (see the constants for why).
    One sequence of 32 random tokens by default: a wrong widening (a lost 1/n, noise that
    does not cancel) shows at every position, and the wide model's forward pass, most of
    verify's time, grows with the tokens. `streamed=None` streams (memory: about the
    largest weight) and falls back to full mode where a model cannot be streamed and both
    fit in 60% of the available RAM; True or False insists on one mode.
    `progress(done, total)` is called as decoder layers run.
    `passed` requires the error within tolerance and no missing or unexpected weights in
    `dst`; the greedy check and the per-layer checks are diagnostics.

    Raises `HypercloneError` when a checkpoint cannot be loaded, when the source itself
    misses weights, or when streamed mode meets a layout it cannot read tensor by tensor
    (per-expert MoE tensors are read as the fused parameter transformers makes of them).
    """
    if _warming is not None:
        _warming.join()
    # Imported here: both modes build on this module's report and helpers.
    from hyperclone_cli.verify_full import verify_full
    from hyperclone_cli.verify_streamed import count_parameters, empty_model, verify_streamed

    from .hub import resolve_source
    from .memory import lean_malloc

    lean_malloc()  # each module's weights, read and dropped, must not stay resident

    # either may be a hub id; `revision` is the source's. Every header and .bin is checked
    # before transformers reads a byte of either.
    src_ckpt = open_checkpoint(resolve_source(src, revision))
    dst_ckpt = open_checkpoint(resolve_source(dst))
    src_config, dst_config = _load_config(src_ckpt.path), _load_config(dst_ckpt.path)
    if tolerance is None:
        tolerance = default_tolerance(dst_ckpt)
    vocab = min(text_config(src_config).vocab_size, text_config(dst_config).vocab_size)
    ids = token_batch(vocab, batch_size, seq_len, seed).to(device)
    layers = 2 * text_config(src_config).num_hidden_layers

    # fewer threads than cores on a busy machine: see _idle_cores
    with _threads(_idle_cores()):
        if streamed is not False:
            src_meta = empty_model(src_ckpt.path, src_config)
            dst_meta = empty_model(dst_ckpt.path, dst_config)
            step = _counter(progress, layers)
            try:
                return verify_streamed(
                    src_ckpt, dst_ckpt, src_meta, dst_meta, ids, tolerance, device, step
                )
            except CannotStream:
                need = 4 * (count_parameters(src_meta) + count_parameters(dst_meta))
                if streamed or need > STREAM_MEMORY_FRACTION * psutil.virtual_memory().available:
                    raise
            del src_meta, dst_meta
        step = _counter(progress, layers)  # (again, in full mode)
        return verify_full(src_ckpt.path, dst_ckpt.path, ids, tolerance, device, step)


def warm_up(src: str | Path) -> threading.Thread:
    """Import transformers and the source's model code on a background thread, so that
    expand does it while it writes: the imports are about a third of a streamed verify of
    SmolLM2 x2 (pure Python; the writing mostly waits on the disk or runs without the GIL)."""

    def imports() -> None:
        try:
            with contextlib.suppress(Exception), _no_collection():  # verify reports failures
                config = _load_config(Path(src))
                from transformers import AutoModelForCausalLM

                AutoModelForCausalLM._model_mapping[type(config)]  # imports the modelling module
        finally:
            sys.setswitchinterval(before)

    global _warming
    # Importing is Python bytecode from end to end: it holds the GIL until the interpreter
    # makes it let go. The writing threads need the GIL back after each of their (GIL-free)
    # tensor ops, writes and hashes, and by default wait up to 5 ms for it each time: that
    # made SmolLM2 x2's writing 2.5x slower while the imports ran. Let them have it sooner.
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, IMPORT_SWITCH_INTERVAL))
    thread = threading.Thread(target=imports, name="hyperclone-verify-imports", daemon=True)
    thread.start()
    _warming = thread
    return thread


# Seconds the import thread may hold the GIL while another thread waits for it (Python's
# default is 5 ms). SmolLM2 x2's default expand, 3 interleaved sets here: 5 ms 7.3-9.2 s
# wall, 0.5 ms 6.7-7.3, 0.1 ms 6.0-7.6, 50 µs 5.5-6.4, 20 µs 5.8-6.3 (--no-verify 3.5-3.8).
IMPORT_SWITCH_INTERVAL = 5e-5


@contextmanager
def _no_collection() -> Iterator[None]:
    """No garbage collection while importing, and the modules' objects out of every later
    one: transformers' imports make objects by the hundred thousand, and the collections
    they set off (each walking all of torch's objects too) took ~1.5 s of CPU (of the ~10
    s that verification added to SmolLM2 x2's expand), for almost no garbage."""
    import gc

    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.collect()  # one collection instead of dozens, then
        gc.freeze()
        gc.enable()


# The warm-up thread, which verify() waits for: transformers' lazy module breaks when two
# threads import from it at once ("cannot import name 'AutoConfig'").
_warming: threading.Thread | None = None


def _idle_cores() -> int:
    """Threads for the forward passes: the cores not already busy. One short token batch
    makes small matrix products, and on a loaded machine torch's extra threads spin
    waiting for each other: 2 threads on a 2-core machine under load 8 took 4.5x the CPU
    time and wall time of 1 thread (streamed verify of SmolLM2 x2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - _busy_cores()))


LOADAVG = Path("/proc/loadavg")  # "1.2 0.9 0.8 3/412 5521": 3 threads runnable now


def _busy_cores(samples: int = 5, every: float = 0.01) -> int:
    """Threads of other work running now. Linux counts the runnable threads in
    /proc/loadavg (this one among them; the median of a few samples); the 1-minute load
    average, the fallback elsewhere, would also count the writing that expand just did."""
    counts = []
    for i in range(samples):
        try:
            running = LOADAVG.read_text().split()[3].split("/")[0]
            counts.append(int(running) - 1)
        except (OSError, IndexError, ValueError):
            return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
        if i + 1 < samples:
            time.sleep(every)
    return sorted(counts)[len(counts) // 2]


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _counter(progress: VerifyProgress | None, total: int) -> Callable[[], None] | None:
    """One call per decoder layer run → progress(done, total)."""
    if progress is None:
        return None
    done = 0
    progress(0, total)

    def step() -> None:
        nonlocal done
        done = min(done + 1, total)
        progress(done, total)

    return step


def token_batch(vocab: int, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    """The same random token ids for both models, from `seed` alone."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch_size, seq_len), generator=generator)


def default_tolerance(checkpoint: Checkpoint | str | Path) -> float:
    """The relative logit tolerance for a checkpoint stored as `stored_dtype(checkpoint)`."""
    return TOLERANCE_FP32 if stored_dtype(checkpoint).itemsize >= 4 else TOLERANCE_HALF


def stored_dtype(checkpoint: Checkpoint | str | Path) -> torch.dtype:
    """The narrowest floating dtype of the weights on disk, else the config's
    `dtype`/`torch_dtype`, else float32."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = open_checkpoint(checkpoint)
    found = {t.dtype for t in checkpoint.tensors.values() if t.dtype.is_floating_point}
    if found:
        return min(found, key=lambda d: d.itemsize)
    for key in ("dtype", "torch_dtype"):
        value = checkpoint.config.get(key)
        if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
            return getattr(torch, value)
    return torch.float32


# --- shared by both modes ---------------------------------------------------------------


@torch.no_grad()
def model_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float().cpu()


def compare_logits(src: torch.Tensor, dst: torch.Tensor) -> dict[str, float]:
    # A destination with a padded vocabulary is compared on the source's tokens.
    vocab = min(src.shape[-1], dst.shape[-1])
    src, dst = src[..., :vocab].double(), dst[..., :vocab].double()
    max_abs = (src - dst).abs().max().item()
    log_p, log_q = src.log_softmax(-1), dst.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    top1 = (src.argmax(-1) == dst.argmax(-1)).double().mean().item()
    return {
        "max_abs_diff": max_abs,
        "rel_error": max_abs / max(src.abs().max().item(), torch.finfo(torch.float32).tiny),
        "kl": kl,
        "top1_agreement": top1,
    }


def _load_config(path: Path) -> object:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception as err:
        raise HypercloneError(f"cannot load {path}: {first_line(err)}") from err


def text_config(config: object) -> object:
    # Multimodal configs keep the language model's sizes in a sub-config.
    get = getattr(config, "get_text_config", None)
    return get() if get else config


def preview(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
