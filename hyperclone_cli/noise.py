"""Symmetry-breaking noise that cancels exactly and is the same bytes everywhere.

Noise goes on the input side of a weight: within a row, the copies of each source column
get `η_j` with `Σ_j η_j = 0`, so it cancels against the cloned input. It is drawn in fixed
*logical* blocks of rows (a constant of this generator, not the chunk size the caller
computes in), each keyed by (tensor seed, block index), with the counter-based generator of
normals.py: integer arithmetic that gives the same bits on the CPU (a compiled loop, blocks
in parallel threads) and on a GPU (where the weights are: nothing crosses PCIe). So any
chunking, thread count, worker count or device gets the same numbers. Blocks hold *unit*
normals; the device that computes multiplies them by the tensor's std (one float32
product). Unit draws do not depend on the weights, so on the CPU a `NoiseBank` draws the
chunks a whole run will ask for ahead of time, while the disk writes.

Per row, with the copies of column c at c, c+d, … (or next to each other): for n = 2 one
draw per source column gives `+η, −η`; for n > 2, n draws minus their mean. Other index
maps subtract the mean over the copies with index_add. Every element has variance
`noise_std²`.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import defaultdict, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from . import normals

NOISE_VERSION = "3"  # the stream: record it with the seed; bump when the bytes change
BLOCK_ELEMENTS = 1 << 16  # target elements per logical block: part of the seeded bytes
WORKERS: int | None = None  # threads drawing blocks on the CPU; None: every core
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
    rows = flat[:body].view(-1, _STD_ROW)
    step = 256  # rows at a time: the float64 copy stays a few MB
    norms = [
        torch.linalg.vector_norm(rows[i : i + step], dim=1, dtype=torch.float64)
        for i in range(0, rows.shape[0], step)
    ]
    tail = torch.linalg.vector_norm(flat[body:], dtype=torch.float64)
    squares = torch.cat(norms).square().tolist() if norms else []
    total = math.fsum(squares) + float(tail) ** 2
    signal = total / max(flat.numel(), 1) / n_in**2
    std = math.sqrt(signal / 10 ** (snr_db / 10))
    m, e = math.frexp(std)
    return math.ldexp(round(m * 2**_STD_BITS) / 2**_STD_BITS, e)


def copy_layout(idx: torch.Tensor, source_size: int) -> tuple[int, int, int] | None:
    """`(outer, n, inner)` when target index `(o, j, i)` copies source `o·inner + i` for
    every copy j: tile maps (outer = 1) and copies side by side (inner = block); else None.
    (Every layer's tensors have the same maps: worked out once per map, by its contents.)"""
    return _copy_layout(index_bytes(idx), source_size)


def index_bytes(idx: torch.Tensor) -> bytes:
    """An index map's contents, as a cache key."""
    return idx.to("cpu", torch.int64).numpy().tobytes()


@functools.lru_cache(maxsize=256)
def _copy_layout(raw: bytes, source_size: int) -> tuple[int, int, int] | None:
    idx = torch.frombuffer(bytearray(raw), dtype=torch.int64)
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


DrawKey = tuple[int, tuple[int, ...], int, int]  # (tensor seed, row shape, first block, end)


class NoiseStream:
    """The seeded, scaled noise of one tensor, `(rows, *mid, in)` with the widened input
    axis last, for any range of rows (axis 0 of that layout). `bank`, when given, may hold
    the unit draws already (drawn ahead); the bytes are the same either way."""

    def __init__(
        self,
        shape: tuple[int, ...],
        idx: torch.Tensor,
        source_size: int,
        std: float,
        tensor_seed: int,
        bank: NoiseBank | None = None,
    ) -> None:
        self.shape = shape
        self.idx = idx.cpu()
        self.source_size = source_size
        self.std = std
        self.seed = tensor_seed
        self.bank = bank
        self.layout = copy_layout(self.idx, source_size)
        self.factor = self.idx.numel() // max(source_size, 1)
        row = math.prod(shape[1:])
        self.block_rows = max(1, BLOCK_ELEMENTS // max(row, 1))

    @property
    def paired(self) -> bool:
        """Whether copies are `+η, −η` of one draw (n = 2 on a clean copy layout)."""
        return self.layout is not None and self.layout[1] == 2

    def half_unit(self, r0: int, r1: int, device: torch.device | None = None) -> torch.Tensor:
        """For a paired stream: unit draws z of rows r0:r1, shape `(rows, *mid, outer,
        inner)`, on `device` (default the CPU); η = z·std (one float32 product, on the device
        that adds it), copy 0 gets `+η`, copy 1 `−η`."""
        return self._draw(r0, r1, device)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """η for rows r0:r1 in the full layout `(rows, *mid, in)`, float32, on the CPU."""
        mid = self.shape[1:-1]
        if self.paired:
            e = self.half_unit(r0, r1).mul_(self.std)
            return torch.stack([e, -e], dim=-2).reshape(r1 - r0, *mid, -1)
        if self.layout is not None:
            outer, n, inner = self.layout
            x = self._draw(r0, r1).mul_(self.std)
            x = (x - x.mean(dim=-2, keepdim=True)) * math.sqrt(n / (n - 1))
            return x.reshape(r1 - r0, *mid, -1)
        x = self._draw(r0, r1).mul_(self.std)
        n = max(self.factor, 2)
        return zero_sum_over_copies(x, self.idx, self.source_size) * math.sqrt(n / (n - 1))

    def row_shape(self) -> tuple[int, ...]:
        """What one row of draws holds (the shape after the rows axis): per source column
        for a paired stream, per target column otherwise."""
        mid = self.shape[1:-1]
        if self.paired:
            return (*mid, self.layout[0], self.layout[2])
        if self.layout is not None:
            return (*mid, *self.layout)
        return (*mid, self.idx.numel())

    def request(self, r0: int, r1: int) -> Request:
        """What rows r0:r1 draw (whole logical blocks of this seed), for `_draw` or for a
        NoiseBank to make ahead."""
        br = self.block_rows
        return Request((self.seed, self.row_shape(), r0 // br, -(-r1 // br)), br, self.shape[0])

    def _draw(self, r0: int, r1: int, device: torch.device | None = None) -> torch.Tensor:
        """Unit normal draws for rows r0:r1, `(rows, *row_shape)`: whole logical blocks, on a
        GPU there, on the CPU from the bank when it holds them, else drawn here in parallel."""
        req = self.request(r0, r1)
        if device is not None and device.type != "cpu":
            out = draw_blocks_on(req, device)
        else:
            out = self.bank.take(req.key) if self.bank is not None else None
            if out is None:
                out = draw_blocks(req)
        return out[r0 - req.lo : r1 - req.lo]


def draw_blocks(req: Request, into: torch.Tensor | None = None) -> torch.Tensor:
    """Unit normals of the blocks `req` names, on the CPU, each block keyed by itself, runs
    of blocks in parallel threads; `into`: flat float32 memory to draw into."""
    seed, row_shape, b0, b1 = req.key
    shape = (req.hi - req.lo, *row_shape)
    if into is not None:
        out = into[: math.prod(shape)].view(shape)
    else:
        out = torch.empty(shape, dtype=torch.float32)

    # contiguous runs of blocks, one per thread: each run is one call of the compiled loop
    flat = out.view(-1).numpy()
    per_block = req.block_rows * math.prod(row_shape)
    blocks = list(range(b0, b1))
    step = -(-len(blocks) // (WORKERS or _cores()))
    runs = [blocks[i : i + step] for i in range(0, len(blocks), step)]

    def fill(run: list[int]) -> None:
        lo_el = (run[0] - b0) * per_block
        hi_el = min((run[-1] + 1 - b0) * per_block, flat.size)
        normals.fill(flat[lo_el:hi_el], [_block_seed(seed, b) for b in run], per_block)

    if len(runs) > 1:
        list(_pool(len(runs)).map(fill, runs))
    elif runs:
        fill(runs[0])
    return out


def draw_blocks_on(req: Request, device: torch.device) -> torch.Tensor:
    """`draw_blocks` computed on `device` (a GPU): the same bits."""
    seed, row_shape, b0, b1 = req.key
    row = math.prod(row_shape)
    full = [b for b in range(b0, b1) if (b + 1) * req.block_rows <= req.rows]
    keys = [_block_seed(seed, b) for b in full]
    parts = [normals.fill_torch(keys, req.block_rows * row, device)]
    if len(full) < b1 - b0:  # the last block of the tensor, shorter
        tail = (req.rows - (b1 - 1) * req.block_rows) * row
        parts.append(normals.fill_torch([_block_seed(seed, b1 - 1)], tail, device))
    return torch.cat(parts).view(req.hi - req.lo, *row_shape)


@dataclass(frozen=True)
class Request:
    """One draw: its key (tensor seed, row shape, blocks b0:b1), and how its stream cuts
    rows into blocks; rows lo:hi are what it covers."""

    key: DrawKey
    block_rows: int
    rows: int

    @property
    def lo(self) -> int:
        return self.key[2] * self.block_rows

    @property
    def hi(self) -> int:
        return min(self.key[3] * self.block_rows, self.rows)

    @property
    def elements(self) -> int:
        return (self.hi - self.lo) * math.prod(self.key[1])


class NoiseBank:
    """Draws, in a background thread, the unit noise a run will ask for, in the order it
    will ask, at most `budget` elements ahead of the consumer: so the draws run while the
    disk writes instead of between chunks. A request the bank did not foresee (or has
    passed) is drawn by the caller; the bytes never depend on the bank. What `take` returns
    is the caller's until its next `take` (then its memory is drawn into again: fresh pages
    cost more than the draws)."""

    SPARE = 2  # buffers kept for reuse

    def __init__(self, requests: Iterable[Request], budget: int) -> None:
        self.requests = list(requests)
        self.budget = budget
        self.where: dict[DrawKey, deque[int]] = defaultdict(deque)
        for i, r in enumerate(self.requests):
            self.where[r.key].append(i)
        self.ready: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # draws, their memory
        self.held = 0  # elements drawn and not yet taken
        self.consumer = 0  # requests before this one are taken or skipped
        self.served = 0  # requests answered from the bank (the rest the caller drew)
        self.lent: torch.Tensor | None = None  # the last answer's memory
        self.spare: list[torch.Tensor] = []  # flat float32 buffers to draw into
        self.closed = False
        self.error: BaseException | None = None  # what stopped the bank early, if anything
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="noise-bank", daemon=True)
        self.thread.start()

    def take(self, key: DrawKey) -> torch.Tensor | None:
        """The draws for `key`, waiting for them if the bank is on its way; None if the bank
        will not draw them (not foreseen, already passed)."""
        with self.cond:
            places = self.where.get(key)
            while places and places[0] < self.consumer:
                places.popleft()
            if not places:
                return None
            i = places.popleft()
            self.consumer = i
            if self.lent is not None:  # the caller is done with the last answer
                self.spare = sorted([*self.spare, self.lent], key=torch.Tensor.numel)
                self.spare = self.spare[-self.SPARE :]  # keep the largest
            self.lent = None
            for j in [j for j in self.ready if j < i]:  # skipped: free their room
                self.held -= self.requests[j].elements
                del self.ready[j]
            self.cond.notify_all()
            while i not in self.ready and not self.closed:
                self.cond.wait()
            out, base = self.ready.pop(i, (None, None))
            if out is not None:
                self.held -= self.requests[i].elements
                self.served += 1
                self.lent = base
            self.consumer = i + 1
            self.cond.notify_all()
            return out

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.ready.clear()
            self.spare.clear()
            self.held = 0
            self.cond.notify_all()
        self.thread.join()

    def __enter__(self) -> NoiseBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _buffer(self, elements: int) -> torch.Tensor | None:
        """A spare flat buffer of at least `elements` (the smallest that fits), or None."""
        with self.cond:
            fits = [b for b in self.spare if b.numel() >= elements]
            if not fits:
                return None
            best = min(fits, key=torch.Tensor.numel)
            self.spare = [b for b in self.spare if b is not best]
            return best

    def _run(self) -> None:
        try:
            for i, r in enumerate(self.requests):
                with self.cond:
                    while (
                        not self.closed
                        and i >= self.consumer
                        and self.held
                        and self.held + r.elements > self.budget
                    ):
                        self.cond.wait()
                    if self.closed:
                        return
                    if i < self.consumer:  # passed: the consumer drew it itself
                        continue
                base = self._buffer(r.elements)
                out = draw_blocks(r, base)
                base = out.view(-1) if base is None else base
                with self.cond:
                    if self.closed:
                        return
                    if i >= self.consumer:
                        self.ready[i] = (out, base)
                        self.held += r.elements
                    self.cond.notify_all()
        except BaseException as e:  # the consumer draws what is left itself
            with self.cond:
                self.error = e
                self.closed = True
                self.ready.clear()
                self.held = 0
                self.cond.notify_all()


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
