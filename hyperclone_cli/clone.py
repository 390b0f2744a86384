"""The math of HyperCloning, as pure tensor functions.

Every widened axis is described by an *index map*: `idx[t]` is the source index that
target index `t` copies. Tiling `[x; x]` is `arange(n*d) % d`; placing the copies of each
head next to each other is a block-wise repeat. With that one idea:

- an axis on the *output* side (rows of a Linear, embeddings, norms, biases) is gathered;
- an axis on the *input* side (columns of a Linear) is gathered and divided by how many
  copies of that source index exist, so that `W' [x; x] = W x`;
- noise on the input side is zero-sum over the copies of each source column within a row,
  so it cancels exactly against the cloned input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .families.base import IN, OUT

Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def tile_map(size: int, n: int) -> torch.Tensor:
    """`[x; x; …]`: target index t copies source index t mod size."""
    return torch.arange(size * n) % size


def interleave_map(size: int, n: int, block: int) -> torch.Tensor:
    """Copies of each block of `block` indices placed next to each other: `[b0, b0, b1, b1, …]`."""
    t = torch.arange(size * n)
    return (t // (n * block)) * block + t % block


def identity_map(size: int) -> torch.Tensor:
    return torch.arange(size)


def multiplicity(idx: torch.Tensor, size: int) -> torch.Tensor:
    """How many target indices copy each source index (n for a clean n-fold widening)."""
    return torch.bincount(idx, minlength=size)


def copy_rank(idx: torch.Tensor) -> torch.Tensor:
    """For each target index, which copy (0, 1, …) of its source index it is."""
    rank = torch.empty_like(idx)
    seen: dict[int, int] = {}
    for t, s in enumerate(idx.tolist()):
        rank[t] = seen.get(s, 0)
        seen[s] = rank[t].item() + 1
    return rank


@dataclass(frozen=True)
class AxisMap:
    """How one axis of a tensor widens: which source index each target index copies,
    and whether the axis is an output (gather) or input (gather and divide) side."""

    idx: torch.Tensor  # (target_size,) long
    source_size: int
    side: str  # OUT or IN
    # multiplier per target index, or None: scales one part of a fused axis (the q rows of
    # GPT-2's [q | k | v] under head-dim attention) where a tensor-wide scale cannot
    scale: torch.Tensor | None = None

    @property
    def target_size(self) -> int:
        return int(self.idx.numel())

    @property
    def factor(self) -> int:
        return self.target_size // max(self.source_size, 1)

    @property
    def widened(self) -> bool:
        return self.target_size != self.source_size


@dataclass(frozen=True)
class Noise:
    """Symmetry-breaking noise: SNR in dB per weight block, seeded per tensor."""

    snr_db: float
    seed: int


def noise_std(w: torch.Tensor, n_in: int, snr_db: float) -> float:
    """Standard deviation giving `mean(η²) = mean((W/n)²) / 10^(snr/10)` after the
    zero-sum projection (which removes a fraction 1/n of the variance)."""
    total = 0.0
    flat = w.reshape(-1)
    for i in range(0, flat.numel(), 1 << 24):  # chunked: no float64 copy of a large tensor
        total += float(flat[i : i + (1 << 24)].double().pow(2).sum())
    signal = total / max(flat.numel(), 1) / n_in**2
    return math.sqrt(signal / 10 ** (snr_db / 10) * n_in / (n_in - 1))


def zero_sum_over_copies(eta: torch.Tensor, idx: torch.Tensor, source_size: int) -> torch.Tensor:
    """Subtract, in every row, the mean over the copies of each source column (last axis)."""
    sums = torch.zeros(*eta.shape[:-1], source_size, dtype=eta.dtype, device=eta.device)
    sums.index_add_(-1, idx, eta)
    mult = multiplicity(idx.cpu(), source_size).to(eta.device, eta.dtype)
    return eta - (sums / mult)[..., idx]


def expand(
    w: torch.Tensor,
    axes: tuple[AxisMap, ...],
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    diagonal: bool = False,
    noise: Noise | None = None,
    tensor_seed: int = 0,
    out_dtype: torch.dtype | None = None,
    max_chunk_elements: int = 1 << 24,
    alloc: Alloc | None = None,
) -> Iterator[torch.Tensor]:
    """Widen `w` and yield the target tensor in row chunks (axis 0), in order.

    `axes` has one AxisMap per dimension of `w`. `scale` multiplies the result; `offset`
    handles norms stored as `(offset + w)` (Gemma), so the scale acts on the real gain.
    `diagonal` fills a matrix whose both sides widen with `W` on matching copies and zeros
    elsewhere instead of `W/n` everywhere. Noise is added only where an input side widens.
    Chunks are computed in float32 (or float64 for float64 tensors) and cast once, except
    where that round trip cannot change a bit: a bf16/fp16 tensor kept in its dtype whose
    only arithmetic is multiplying by powers of two stays in its dtype (a multiply by 2^k
    is exact, and torch rounds it once from float32 just as the cast would).
    `alloc(shape, dtype)`, when given, provides the memory of the yielded chunks (a writer
    can then reuse a chunk's buffer once it is written).
    """
    if w.dim() != len(axes):
        raise ValueError(f"tensor has {w.dim()} dims but {len(axes)} axis maps were given")
    out_dtype = out_dtype or w.dtype
    work_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    device = w.device
    in_axes = [k for k, a in enumerate(axes) if a.side == IN and a.widened]
    if len(in_axes) > 1:
        raise ValueError("at most one input axis may widen")
    in_axis = in_axes[0] if in_axes else None
    idxs = [a.idx.to(device) for a in axes]
    target_shape = tuple(a.target_size for a in axes)

    # Rows are chunked unless axis 0 is the widened input side (GPT-2's transposed Conv1D):
    # noise must be zero-summed across the copies of a column, which then lie in other rows.
    row_elems = math.prod(target_shape[1:]) if len(target_shape) > 1 else 1
    rows = target_shape[0] if target_shape else 1
    chunk_rows = (
        rows if in_axis == 0 else max(1, min(rows, max_chunk_elements // max(row_elems, 1)))
    )

    std = 0.0
    gen = None
    if noise is not None and in_axis is not None:
        std = noise_std(w, axes[in_axis].factor, noise.snr_db)
        gen = torch.Generator(device="cpu").manual_seed(tensor_seed)

    if w.dim() == 0:
        yield w.to(out_dtype)
        return

    in_div = None
    if in_axis is not None:
        mult = multiplicity(axes[in_axis].idx, axes[in_axis].source_size).to(device, work_dtype)
        in_div = mult[idxs[in_axis]]
    diag_mask_parts = None
    if diagonal and in_axis is not None:
        out_axes = [k for k, a in enumerate(axes) if a.side == OUT and a.widened]
        if out_axes:
            # Row copy r of an output unit reads only input copy (r mod copies-of-that-input).
            o = out_axes[0]
            out_rank = copy_rank(axes[o].idx).to(device)
            in_rank = copy_rank(axes[in_axis].idx).to(device)
            diag_mask_parts = (o, out_rank, in_rank)

    runs = [_runs(a.idx) for a in axes]
    exact = None
    if gen is None and not offset and all(a.scale is None for a in axes):
        exact = _exact_multiplier(w, out_dtype, scale, in_axis, in_div, diag_mask_parts)
    for r0 in range(0, rows, chunk_rows):
        r1 = min(rows, r0 + chunk_rows)
        if exact is not None and diag_mask_parts is None:
            yield _gather(w, runs, idxs, r0, r1, w.dtype, exact, in_axis, alloc)
            continue
        if exact is not None:
            c = _gather(w, runs, idxs, r0, r1, w.dtype, alloc=alloc)
            c.mul_(_diag_keep(diag_mask_parts, in_axis, in_div, c.dim(), r0, r1).to(c.dtype))
            if exact != 1.0:
                c.mul_(exact)
            yield c
            continue
        c = _gather(w, runs, idxs, r0, r1, work_dtype)
        if offset:
            c.add_(offset)
        if in_div is not None:
            if diag_mask_parts is not None:
                c.mul_(_diag_keep(diag_mask_parts, in_axis, in_div, c.dim(), r0, r1).to(work_dtype))
            else:
                shape = [1] * c.dim()
                shape[in_axis] = -1
                c.div_(in_div.view(shape))
        if gen is not None:
            eta = _noise_chunk(c.shape, in_axis, idxs[in_axis], axes[in_axis].source_size, gen)
            c.add_((eta * std).to(device, work_dtype))
        if scale != 1.0:
            c.mul_(scale)
        for k, a in enumerate(axes):
            if a.scale is not None:
                shape = [1] * c.dim()
                shape[k] = -1
                s = a.scale[r0:r1] if k == 0 else a.scale
                c.mul_(s.to(device, work_dtype).view(shape))
        if offset:
            c.sub_(offset)
        if alloc is not None and c.dtype != out_dtype:
            yield alloc(tuple(c.shape), out_dtype).copy_(c)  # what .to() does, in given memory
        else:
            yield c.to(out_dtype).contiguous()


def _diag_keep(parts, in_axis: int, in_div: torch.Tensor, dim: int, r0: int, r1: int):
    o, out_rank, in_rank = parts
    shape = [1] * dim
    shape[in_axis] = -1
    in_mult = in_div.view(shape).to(torch.long)
    shape_o = [1] * dim
    shape_o[o] = -1
    orank = out_rank[r0:r1] if o == 0 else out_rank
    return (orank.view(shape_o) % in_mult) == in_rank.view(shape)


# Powers of two this far from 1 keep every bf16/fp16 value (subnormals included) exact in
# the float32 that torch computes half-precision products in.
_EXACT_EXPONENT = 12


def _exact_multiplier(
    w: torch.Tensor,
    out_dtype: torch.dtype,
    scale: float,
    in_axis: int | None,
    in_div: torch.Tensor | None,
    diag_mask_parts: object,
) -> float | torch.Tensor | None:
    """The multiplier (a number, or one per in-axis index) that gives, in `w`'s own
    half-precision dtype, exactly the bytes of the float32 route; None where it cannot."""
    if w.dtype not in (torch.bfloat16, torch.float16) or out_dtype != w.dtype:
        return None
    if not _is_pow2(scale):
        return None
    if in_div is None or diag_mask_parts is not None:
        multiplier: float | torch.Tensor = scale
    else:
        divisors = torch.unique(in_div.cpu()).tolist()
        if not all(_is_pow2(d) and _is_pow2(scale / d) for d in divisors):
            return None
        multiplier = scale / divisors[0] if len(divisors) == 1 else (scale / in_div).to(w.dtype)
    # NaN bits come out of float32 and half-precision kernels differently (and inf·0 makes
    # one in the diagonal layout): only all-finite tensors take this route.
    return multiplier if _all_finite(w) else None


def _is_pow2(x: float) -> bool:
    m, e = math.frexp(x)
    return m == 0.5 and abs(e - 1) <= _EXACT_EXPONENT


def _all_finite(w: torch.Tensor) -> bool:
    if w.numel() == 0:
        return True
    lo, hi = torch.aminmax(w.reshape(-1))  # NaN propagates; ~15x faster than isfinite().all()
    return bool(lo.isfinite() & hi.isfinite())


def _runs(idx: torch.Tensor) -> list[tuple[int, int, int]]:
    """An index map as contiguous runs (target start, source start, length): a tile map
    `[0…d, 0…d]` is two runs, so widening is a few block copies instead of a gather."""
    idx = idx.cpu()
    if idx.numel() == 0:
        return []
    cuts = (torch.nonzero(idx[1:] - idx[:-1] != 1).flatten() + 1).tolist()
    starts, ends = [0, *cuts], [*cuts, idx.numel()]
    lengths = [e - s for s, e in zip(starts, ends, strict=True)]
    return list(zip(starts, idx[starts].tolist(), lengths, strict=True))


_MAX_BLOCKS = 1024  # past this many (or tiny) blocks, one index_select per axis is faster


def _gather(
    w: torch.Tensor,
    runs: list[list[tuple[int, int, int]]],
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
    row_runs = [
        (lo - r0, s + lo - t, hi - lo)
        for t, s, n in runs[0]
        if (lo := max(t, r0)) < (hi := min(t + n, r1))
    ]
    per_axis = [row_runs, *runs[1:]]
    shape = (r1 - r0, *(int(i.numel()) for i in idxs[1:]))
    if isinstance(mult, torch.Tensor) and mult_axis == 0:
        mult = mult[r0:r1]
    blocks = math.prod(len(r) for r in per_axis)
    if blocks > _MAX_BLOCKS or math.prod(shape) < blocks * 256:
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


def _noise_chunk(
    shape: torch.Size, in_axis: int, idx: torch.Tensor, source_size: int, gen: torch.Generator
) -> torch.Tensor:
    """Unit-variance zero-sum noise for one chunk, drawn on the CPU so one seed gives the
    same bytes on every device."""
    perm = [k for k in range(len(shape)) if k != in_axis] + [in_axis]
    drawn = torch.randn([shape[k] for k in perm], generator=gen, dtype=torch.float32)
    eta = zero_sum_over_copies(drawn, idx.cpu(), source_size)
    inverse = [perm.index(k) for k in range(len(shape))]
    return eta.permute(inverse)


def expand_full(w: torch.Tensor, axes: tuple[AxisMap, ...], **kw) -> torch.Tensor:
    """The whole widened tensor at once (tests and small tensors)."""
    parts = list(expand(w, axes, **kw))
    return torch.cat(parts, dim=0) if w.dim() else parts[0]
