"""Fast routes of the widening in clone.py, each giving the bytes of its reference route.

- an index map as contiguous runs: a tile map `[0…d, 0…d]` is two block copies, not a gather;
- bf16/fp16 kept in their dtype where only powers of two multiply them (exact, and torch
  rounds a half-precision product once from float32, just as the cast would); float32 and
  float64 where the reference rounds once as well;
- noise for two copies (`+η, −η`) computed once per source column, written straight into
  both copies;
- chunk memory from the caller (`alloc`), so a writer can reuse a written chunk's buffer.

tests/test_clone_exact.py pins every route here byte for byte against the reference.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import torch

from .noise import NoiseStream, index_bytes

Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]

# Powers of two this far from 1 keep every bf16/fp16 value (subnormals included) exact in
# the float32 that torch computes half-precision products in.
EXACT_EXPONENT = 12


def exact_multiplier(
    w: torch.Tensor,
    out_dtype: torch.dtype,
    scale: float,
    in_axis: int | None,
    in_div: torch.Tensor | None,
    diagonal: bool,
) -> float | torch.Tensor | None:
    """The multiplier (a number, or one per in-axis index) that gives, in `w`'s own dtype,
    exactly the bytes of the reference route; None where it cannot. Half precision: where
    only powers of two multiply (exact in the float32 the reference computes in). float32
    and float64 (the reference's own dtype): where the reference rounds once too, the same
    real number is rounded once (a scale, or a power-of-two divisor alone)."""
    if out_dtype != w.dtype:
        return None
    if w.dtype in (torch.float32, torch.float64):
        if in_div is None or diagonal:
            multiplier: float | torch.Tensor = scale
        elif scale != 1.0:
            return None  # the reference divides, then scales: two roundings
        else:
            divisors = torch.unique(in_div.cpu()).tolist()
            if not all(is_pow2(d) for d in divisors):
                return None
            multiplier = 1 / divisors[0] if len(divisors) == 1 else (1 / in_div).to(w.dtype)
        return multiplier if _all_finite(w) else None
    if w.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not is_pow2(scale):
        return None
    if in_div is None or diagonal:
        multiplier = scale
    else:
        divisors = torch.unique(in_div.cpu()).tolist()
        if not all(is_pow2(d) and is_pow2(scale / d) for d in divisors):
            return None
        multiplier = scale / divisors[0] if len(divisors) == 1 else (scale / in_div).to(w.dtype)
    # NaN bits come out of float32 and half-precision kernels differently (and inf·0 makes
    # one in the diagonal layout): only all-finite tensors take this route.
    return multiplier if _all_finite(w) else None


def is_pow2(x: float) -> bool:
    m, e = math.frexp(x)
    return m == 0.5 and abs(e - 1) <= EXACT_EXPONENT


def _all_finite(w: torch.Tensor) -> bool:
    if w.numel() == 0:
        return True
    lo, hi = torch.aminmax(w.reshape(-1))  # NaN propagates; ~15x faster than isfinite().all()
    return bool(lo.isfinite() & hi.isfinite())


def runs(idx: torch.Tensor) -> list[tuple[int, int, int]]:
    """An index map as contiguous runs (target start, source start, length): a tile map
    `[0…d, 0…d]` is two runs, so widening is a few block copies instead of a gather.
    (Worked out once per map, by its contents: every layer has the same ones.)"""
    return list(_runs(index_bytes(idx)))


@functools.lru_cache(maxsize=256)
def _runs(raw: bytes) -> tuple[tuple[int, int, int], ...]:
    idx = torch.frombuffer(bytearray(raw), dtype=torch.int64) if raw else torch.empty(0)
    if idx.numel() == 0:
        return ()
    cuts = (torch.nonzero(idx[1:] - idx[:-1] != 1).flatten() + 1).tolist()
    starts, ends = [0, *cuts], [*cuts, idx.numel()]
    lengths = [e - s for s, e in zip(starts, ends, strict=True)]
    return tuple(zip(starts, idx[starts].tolist(), lengths, strict=True))


def runs_within(runs: list[tuple[int, int, int]], r0: int, r1: int) -> list[tuple[int, int, int]]:
    """The part of each run that falls in target rows r0:r1, with target starts made
    relative to r0."""
    return [
        (lo - r0, s + lo - t, hi - lo)
        for t, s, n in runs
        if (lo := max(t, r0)) < (hi := min(t + n, r1))
    ]


MAX_BLOCKS = 1024  # past this many (or tiny) blocks, one index_select per axis is faster


def gather(
    w: torch.Tensor,
    block_runs: list[list[tuple[int, int, int]]],
    idxs: list[torch.Tensor],
    r0: int,
    r1: int,
    dtype: torch.dtype,
    mult: float | torch.Tensor = 1.0,
    mult_axis: int | None = None,
    alloc: Alloc | None = None,
) -> torch.Tensor:
    """Target rows r0:r1 of `w` gathered along every axis, as a new `dtype` tensor, times
    `mult` (a number, or one per target index along `mult_axis`) in the same pass."""
    per_axis = [runs_within(block_runs[0], r0, r1), *block_runs[1:]]
    shape = (r1 - r0, *(int(i.numel()) for i in idxs[1:]))
    if isinstance(mult, torch.Tensor) and mult_axis == 0:
        mult = mult[r0:r1]
    blocks = math.prod(len(r) for r in per_axis)
    if blocks > MAX_BLOCKS or math.prod(shape) < blocks * 256:
        c = w.index_select(0, idxs[0][r0:r1]).to(dtype)
        for k in range(1, w.dim()):
            c = c.index_select(k, idxs[k])
        if isinstance(mult, torch.Tensor):
            view = [1] * c.dim()
            view[mult_axis] = -1
            c.mul_(mult.view(view))
        elif mult != 1.0:
            c.mul_(mult)
        return c
    if alloc is not None:
        out = alloc(shape, dtype)
    else:
        out = torch.empty(shape, dtype=dtype, device=w.device)
    for block in itertools.product(*per_axis):
        dst, src = out, w
        for k, (t, s, n) in enumerate(block):
            dst, src = dst.narrow(k, t, n), src.narrow(k, s, n)
        if isinstance(mult, torch.Tensor):
            t, _, n = block[mult_axis]
            view = [1] * dst.dim()
            view[mult_axis] = -1
            torch.mul(src, mult.narrow(0, t, n).view(view), out=dst)
        elif mult != 1.0:
            torch.mul(src, mult, out=dst)
        else:
            dst.copy_(src)
    return out


def route(
    w: torch.Tensor,
    block_runs: list[list[tuple[int, int, int]]],
    idxs: list[torch.Tensor],
    in_axis: int | None,
    in_div: torch.Tensor | None,
    keep: Callable[[int, int], torch.Tensor] | None,
    stream: NoiseStream | None,
    *,
    scale: float,
    plain: bool,
    work_dtype: torch.dtype,
    out_dtype: torch.dtype,
    alloc: Alloc | None,
) -> Callable[[int, int], torch.Tensor] | None:
    """A function giving target rows r0:r1 with the bytes of clone.widen's reference route,
    or None where no fast route applies. `keep(r0, r1)` is the diagonal layout's mask;
    `plain` says there is no offset and no per-index scale."""
    if not plain:
        return None
    if stream is not None:
        if scale != 1.0 or keep is not None or not noise_fits(stream, w, in_axis):
            return None
        return lambda r0, r1: paired_noise(
            w, block_runs[0], idxs[0], stream, r0, r1, work_dtype, out_dtype, alloc
        )
    exact = exact_multiplier(w, out_dtype, scale, in_axis, in_div, keep is not None)
    if exact is None:
        return None
    if keep is None:
        return lambda r0, r1: gather(w, block_runs, idxs, r0, r1, w.dtype, exact, in_axis, alloc)

    def diagonal(r0: int, r1: int) -> torch.Tensor:
        c = gather(w, block_runs, idxs, r0, r1, w.dtype, alloc=alloc)
        c.mul_(keep(r0, r1).to(c.dtype))
        return c.mul_(exact) if exact != 1.0 else c

    return diagonal


def noise_fits(stream: NoiseStream, w: torch.Tensor, in_axis: int) -> bool:
    """Whether `paired_noise` can widen this tensor: a matrix whose input axis (the last)
    has two copies of each column laid out cleanly."""
    return stream.paired and w.dim() == 2 and in_axis == 1


def paired_noise(
    w: torch.Tensor,
    row_runs: list[tuple[int, int, int]],
    row_idx: torch.Tensor,
    stream: NoiseStream,
    r0: int,
    r1: int,
    work_dtype: torch.dtype,
    out_dtype: torch.dtype,
    alloc: Alloc | None = None,
) -> torch.Tensor:
    """Rows r0:r1 of the reference's `cast(W/2 + η)` and `cast(W/2 − η)`, computed once per
    source column rather than per target column: `W/2` per run of source rows, then one add
    and one subtract written straight into the two copies (cast on the way)."""
    # unit draws made on w's device (the same numbers on every device), scaled there
    e = stream.half_unit(r0, r1, w.device)
    e.mul_(stream.std)  # (rows, outer, inner): η, one float32 product as the reference's
    shape = (r1 - r0, 2 * w.shape[1])
    if alloc is not None:
        out = alloc(shape, out_dtype)
    else:
        out = torch.empty(shape, dtype=out_dtype, device=w.device)
    copies = out.view(*e.shape[:-1], 2, e.shape[-1])
    runs = runs_within(row_runs, r0, r1)
    if len(runs) > MAX_BLOCKS:
        runs = [(0, -1, r1 - r0)]  # scattered rows: one gather
    for t, s, n in runs:
        src = w.index_select(0, row_idx[r0:r1]) if s < 0 else w.narrow(0, s, n)
        half = src.to(work_dtype).div_(2) if src.dtype != work_dtype or s < 0 else src / 2
        half = half.view(n, *e.shape[1:])  # W/2, as the reference
        torch.add(half, e[t : t + n], out=copies[t : t + n].select(-2, 0))
        torch.sub(half, e[t : t + n], out=copies[t : t + n].select(-2, 1))  # h - e == h + (-e)
    return out
