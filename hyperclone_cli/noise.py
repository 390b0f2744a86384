"""Symmetry-breaking noise that cancels exactly and is the same bytes everywhere.

Noise goes on the input side of a weight: within a row, the copies of each source column
get `η_j` with `Σ_j η_j = 0`, so it cancels against the cloned input. It is drawn on the
CPU in fixed *logical* blocks of rows (a constant of this generator, not the chunk size
the caller computes in), each from its own generator keyed by (tensor seed, block index):
so any chunking, thread count or worker count, and CPU or CUDA, gets the same numbers, and
blocks are drawn in parallel threads (torch releases the GIL while it draws).

Per row, with the copies of column c at c, c+d, … (or next to each other): for n = 2 one
draw per source column gives `+η, −η`; for n > 2, n draws minus their mean. Other index
maps subtract the mean over the copies with index_add. Every element has variance
`noise_std²`.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

NOISE_VERSION = "2"  # the stream: record it with the seed; bump when the bytes change
BLOCK_ELEMENTS = 1 << 16  # target elements per logical block: part of the seeded bytes
WORKERS: int | None = None  # threads drawing blocks; None: every core (the draws are serial
# within a block, so they use the writer's core too while it waits on the disk)
_STD_ROW = 4096  # sum of squares per row of this many elements, then summed exactly
_STD_BITS = 12  # std rounded to this many bits: a summation order cannot move a byte


@dataclass(frozen=True)
class Noise:
    """Symmetry-breaking noise: SNR in dB per weight block, seeded per tensor."""

    snr_db: float
    seed: int


def noise_std(w: torch.Tensor, n_in: int, snr_db: float) -> float:
    """Standard deviation of unit noise giving `mean(η²) = mean((W/n)²) / 10^(snr/10)`.

    Squares are summed in float64 per row of `_STD_ROW` elements (one fast pass) and the
    row sums added exactly (fsum); the std is then rounded to `_STD_BITS` bits, so another
    device's or thread count's summation order cannot change a byte of the noise."""
    flat = w.reshape(-1)
    body = flat.numel() // _STD_ROW * _STD_ROW
    rows = torch.linalg.vector_norm(flat[:body].view(-1, _STD_ROW), dim=1, dtype=torch.float64)
    tail = torch.linalg.vector_norm(flat[body:], dtype=torch.float64)
    total = math.fsum(rows.square().tolist()) + float(tail) ** 2
    signal = total / max(flat.numel(), 1) / n_in**2
    std = math.sqrt(signal / 10 ** (snr_db / 10))
    m, e = math.frexp(std)
    return math.ldexp(round(m * 2**_STD_BITS) / 2**_STD_BITS, e)


def copy_layout(idx: torch.Tensor, source_size: int) -> tuple[int, int, int] | None:
    """`(outer, n, inner)` when target index `(o, j, i)` copies source `o·inner + i` for
    every copy j: tile maps (outer = 1) and copies side by side (inner = block); else None."""
    idx = idx.cpu()
    target = idx.numel()
    if source_size == 0 or target % source_size or target == source_size or int(idx[0]) != 0:
        return None
    n = target // source_size
    breaks = torch.nonzero(idx[1:] - idx[:-1] != 1).flatten()
    inner = int(breaks[0]) + 1 if breaks.numel() else target
    if source_size % inner:
        return None
    outer = source_size // inner
    want = torch.arange(source_size).view(outer, 1, inner).expand(outer, n, inner).reshape(-1)
    return (outer, n, inner) if torch.equal(idx, want) else None


class NoiseStream:
    """The seeded, scaled noise of one tensor, `(rows, *mid, in)` with the widened input
    axis last, for any range of rows (axis 0 of that layout)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        idx: torch.Tensor,
        source_size: int,
        std: float,
        tensor_seed: int,
    ) -> None:
        self.shape = shape
        self.idx = idx.cpu()
        self.source_size = source_size
        self.std = std
        self.seed = tensor_seed
        self.layout = copy_layout(self.idx, source_size)
        self.factor = self.idx.numel() // max(source_size, 1)
        row = math.prod(shape[1:])
        self.block_rows = max(1, BLOCK_ELEMENTS // max(row, 1))

    @property
    def paired(self) -> bool:
        """Whether copies are `+η, −η` of one draw (n = 2 on a clean copy layout)."""
        return self.layout is not None and self.layout[1] == 2

    def half(self, r0: int, r1: int, pin: bool = False) -> torch.Tensor:
        """For a paired stream: η of rows r0:r1, shape `(rows, *mid, outer, inner)`;
        copy 0 gets `+η`, copy 1 gets `−η`. `pin`: in page-locked memory, for a GPU to
        copy without waiting."""
        outer, _, inner = self.layout
        return self._draw(r0, r1, (outer, inner), pin)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """η for rows r0:r1 in the full layout `(rows, *mid, in)`, float32, on the CPU."""
        mid = self.shape[1:-1]
        if self.paired:
            e = self.half(r0, r1)
            return torch.stack([e, -e], dim=-2).reshape(r1 - r0, *mid, -1)
        if self.layout is not None:
            outer, n, inner = self.layout
            x = self._draw(r0, r1, (outer, n, inner))
            x = (x - x.mean(dim=-2, keepdim=True)) * math.sqrt(n / (n - 1))
            return x.reshape(r1 - r0, *mid, -1)
        x = self._draw(r0, r1, (self.idx.numel(),))
        n = max(self.factor, 2)
        return zero_sum_over_copies(x, self.idx, self.source_size) * math.sqrt(n / (n - 1))

    def _draw(self, r0: int, r1: int, per_row: tuple[int, ...], pin: bool = False) -> torch.Tensor:
        """Normal draws (std `self.std`) for rows r0:r1: whole logical blocks, in parallel."""
        br = self.block_rows
        b0, b1 = r0 // br, -(-r1 // br)
        lo, hi = b0 * br, min(b1 * br, self.shape[0])
        shape = (hi - lo, *self.shape[1:-1], *per_row)
        out = torch.empty(shape, dtype=torch.float32, pin_memory=pin)

        def fill(b: int) -> None:
            g = torch.Generator().manual_seed(_block_seed(self.seed, b))
            out[b * br - lo : min((b + 1) * br, hi) - lo].normal_(0.0, self.std, generator=g)

        blocks = range(b0, b1)
        workers = WORKERS or _cores()
        if workers > 1 and len(blocks) > 1:
            list(_pool(workers).map(fill, blocks))
        else:
            for b in blocks:
                fill(b)
        return out[r0 - lo : r1 - lo]


def zero_sum_over_copies(eta: torch.Tensor, idx: torch.Tensor, source_size: int) -> torch.Tensor:
    """Subtract, in every row, the mean over the copies of each source column (last axis)."""
    sums = torch.zeros(*eta.shape[:-1], source_size, dtype=eta.dtype, device=eta.device)
    sums.index_add_(-1, idx, eta)
    mult = torch.bincount(idx.cpu(), minlength=source_size).to(eta.device, eta.dtype)
    return eta - (sums / mult)[..., idx]


def _block_seed(tensor_seed: int, block: int) -> int:
    """splitmix64 of (tensor seed, block): independent generator seeds per block."""
    z = (tensor_seed * 0x9E3779B97F4A7C15 + block + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1  # 63 bits


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="noise")
        return _pools[workers]
