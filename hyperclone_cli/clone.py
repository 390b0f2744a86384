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

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import fastpath
from .families.base import IN, OUT
from .fastpath import Alloc
from .noise import Noise, NoiseBank, NoiseStream, Request, noise_std


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


def widen(
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
    bank: NoiseBank | None = None,
) -> Iterator[torch.Tensor]:
    """Widen `w` and yield the target tensor in row chunks (axis 0), in order.

    `axes` has one AxisMap per dimension of `w`. `scale` multiplies the result; `offset`
    handles norms stored as `(offset + w)` (Gemma), so the scale acts on the real gain.
    `diagonal` fills a matrix whose both sides widen with `W` on matching copies and zeros
    elsewhere instead of `W/n` everywhere. Noise is added only where an input side widens.
    The reference route below computes in float32 (float64 for float64 tensors) and casts
    once; fastpath.py gives the same bytes faster where it can. `alloc(shape, dtype)`, when
    given, provides the memory of the yielded chunks (a writer can then reuse it).
    `bank` may hold the noise's draws already (see `noise_requests`); bytes are the same.
    """
    if w.dim() != len(axes):
        raise ValueError(f"tensor has {w.dim()} dims but {len(axes)} axis maps were given")
    out_dtype = out_dtype or w.dtype
    if w.dim() == 0:
        yield w.to(out_dtype)
        return
    work_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    device = w.device
    in_axis = _in_axis(axes)
    idxs = [a.idx.to(device) for a in axes]
    target_shape = tuple(a.target_size for a in axes)

    in_div = None  # copies of each input index: the input side is divided by it
    if in_axis is not None:
        mult = multiplicity(axes[in_axis].idx, axes[in_axis].source_size).to(device, work_dtype)
        in_div = mult[idxs[in_axis]]
    keep = None  # the diagonal layout's mask for rows r0:r1
    if diagonal and in_axis is not None:
        out_axes = [k for k, a in enumerate(axes) if a.side == OUT and a.widened]
        if out_axes:
            # Row copy r of an output unit reads only input copy (r mod copies-of-that-input).
            o = out_axes[0]
            ranks = (o, copy_rank(axes[o].idx).to(device), copy_rank(axes[in_axis].idx).to(device))
            keep = functools.partial(_diag_keep, ranks, in_axis, in_div, w.dim())
    stream = None
    if noise is not None and in_axis is not None:
        std = noise_std(w, axes[in_axis].factor, noise.snr_db)
        stream = _noise_stream(axes, in_axis, std, tensor_seed, bank)

    runs = [fastpath.runs(a.idx) for a in axes]
    fast = fastpath.route(
        w, runs, idxs, in_axis, in_div, keep, stream, scale=scale,
        plain=not offset and all(a.scale is None for a in axes),
        work_dtype=work_dtype, out_dtype=out_dtype, alloc=alloc,
    )  # fmt: skip
    for r0, r1 in _row_chunks(target_shape, in_axis, max_chunk_elements, stream):
        if fast is not None:  # the same bytes as below, sooner
            yield fast(r0, r1)
            continue
        # The reference route: gather, divide by copies on the input side, noise, scale.
        c = fastpath.gather(w, runs, idxs, r0, r1, work_dtype)
        if offset:
            c.add_(offset)
        if in_div is not None:
            if keep is not None:
                c.mul_(keep(r0, r1).to(work_dtype))
            else:
                shape = [1] * c.dim()
                shape[in_axis] = -1
                c.div_(in_div.view(shape))
        if stream is not None:
            eta = stream.rows(r0, r1) if in_axis != 0 else stream.rows(0, stream.shape[0])
            c.add_(eta.movedim(-1, in_axis).to(device, work_dtype))
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


def _in_axis(axes: tuple[AxisMap, ...]) -> int | None:
    in_axes = [k for k, a in enumerate(axes) if a.side == IN and a.widened]
    if len(in_axes) > 1:
        raise ValueError("at most one input axis may widen")
    return in_axes[0] if in_axes else None


def _noise_stream(
    axes: tuple[AxisMap, ...], in_axis: int, std: float, seed: int, bank: NoiseBank | None
) -> NoiseStream:
    # noise is laid out with the input axis last; its rows are axis 0 unless that is it
    perm = [k for k in range(len(axes)) if k != in_axis] + [in_axis]
    shape = tuple(axes[k].target_size for k in perm)
    return NoiseStream(shape, axes[in_axis].idx, axes[in_axis].source_size, std, seed, bank)


def noise_requests(
    axes: tuple[AxisMap, ...], tensor_seed: int, max_chunk_elements: int = 1 << 24
) -> list[Request]:
    """The draws `widen(…, noise=…, tensor_seed, max_chunk_elements)` will ask for, in order,
    known before the weights are read: a NoiseBank makes them ahead."""
    in_axis = _in_axis(axes)
    if in_axis is None:
        return []
    stream = _noise_stream(axes, in_axis, 1.0, tensor_seed, None)
    target_shape = tuple(a.target_size for a in axes)
    if in_axis == 0:  # the noise's rows are another axis: all of them at once (see widen)
        return [stream.request(0, stream.shape[0])]
    chunks = _row_chunks(target_shape, in_axis, max_chunk_elements, stream)
    return [stream.request(r0, r1) for r0, r1 in chunks]


def _row_chunks(
    shape: tuple[int, ...], in_axis: int | None, max_elements: int, stream: NoiseStream | None
) -> Iterator[tuple[int, int]]:
    """Row ranges to compute at a time. All rows at once where axis 0 is the widened input
    side (GPT-2's transposed Conv1D): its copies, zero-summed together, lie in other rows.
    With noise, whole logical noise blocks (the bytes do not depend on it; speed does)."""
    rows = shape[0]
    row_elems = math.prod(shape[1:])
    n = rows if in_axis == 0 else max(1, min(rows, max_elements // max(row_elems, 1)))
    if stream is not None and in_axis != 0 and n < rows:
        n = max(stream.block_rows, n // stream.block_rows * stream.block_rows)
    for r0 in range(0, rows, n):
        yield r0, min(rows, r0 + n)


def _diag_keep(parts, in_axis: int, in_div: torch.Tensor, dim: int, r0: int, r1: int):
    o, out_rank, in_rank = parts
    shape = [1] * dim
    shape[in_axis] = -1
    in_mult = in_div.view(shape).to(torch.long)
    shape_o = [1] * dim
    shape_o[o] = -1
    orank = out_rank[r0:r1] if o == 0 else out_rank
    return (orank.view(shape_o) % in_mult) == in_rank.view(shape)


def widen_full(w: torch.Tensor, axes: tuple[AxisMap, ...], **kw) -> torch.Tensor:
    """The whole widened tensor at once (tests and small tensors)."""
    parts = list(widen(w, axes, **kw))
    return torch.cat(parts, dim=0) if w.dim() else parts[0]
