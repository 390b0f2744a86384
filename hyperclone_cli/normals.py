"""Counter-based unit normals: the same bits from the same integer arithmetic everywhere.

Element i of a block keyed `key` (a 64-bit integer) is
`TABLE[lane (i mod 4) of splitmix64(key + (i div 4)·γ)]`: each 64-bit hash gives four 16-bit
lanes (lane j = bits 16j…16j+15), and `TABLE` holds the 65536 normal quantiles
`Φ⁻¹((k + ½)/65536)`, rescaled to unit variance and rounded to float32 (its tails stop at
±4.3σ). Nothing depends on a library's random generator, the order of evaluation or the
device, so three implementations give one stream, pinned to each other by tests:

- numpy: the same arithmetic as array operations on cache-sized chunks (~2 ns per draw on
  one core), used until
- `numba`'s compiled loop (~1 ns per draw) is loaded: a run that draws enough to repay its
  load (~0.75 s and ~110 MB, `COMPILED_MIN_DRAWS`) loads it in the background
  (`warm_compiled`), and the draws switch to it when it is ready;
- torch (`fill_torch`): int64 operations that a GPU runs where the weights are.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import threading

import numpy as np
import torch

GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment and finaliser
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
LANES = 4  # 16-bit lanes per 64-bit hash
MASK64 = (1 << 64) - 1
# A run drawing fewer normals than this keeps to numpy: loading numba's loop costs ~0.75 s of
# a core and ~110 MB, which it repays at ~1 ns saved per draw (numpy ~2.1 ns, numba ~1.05 on
# the 2-core bench machine). make bench: its 1.26B-parameter target (~600 M draws) ran 1.29x
# plain with numpy and 1.10x with numba; SmolLM2 x2 (~215 M) and the 300M target (~125 M)
# were faster with numpy.
COMPILED_MIN_DRAWS = 1 << 28
CHUNK_WORDS = 1 << 15  # numpy's hashes per pass: 256 KB of uint64, in the core's L2


@functools.cache
def table() -> np.ndarray:
    """The 65536 float32 normal quantiles, unit variance (float64 arithmetic, then one
    rounding; Python's own inverse CDF, so no library version moves a value)."""
    nd = statistics.NormalDist()
    q = [nd.inv_cdf((k + 0.5) / 65536) for k in range(65536)]
    std = math.sqrt(math.fsum(v * v for v in q) / len(q))
    return np.array([v / std for v in q], dtype=np.float32)


@functools.cache
def _table_on(device: torch.device) -> torch.Tensor:
    return torch.from_numpy(table()).to(device)


def fill(out: np.ndarray, keys: list[int], block: int, engine: str | None = None) -> None:
    """Unit normals of consecutive blocks into the flat float32 array `out`: block k, keyed
    `keys[k]`, holds `block` elements (the last one what is left). `engine`: "numba",
    "numpy", or None for the compiled loop when it is loaded, else numpy's (same bits)."""
    if engine == "numba":
        kernel = _numba_kernel()
        if kernel is None:
            raise RuntimeError("numba's loop is not available here")
    else:
        kernel = _loaded_kernel() if engine is None else None
    if kernel is not None:
        kernel(out, table(), np.array([k & MASK64 for k in keys], dtype=np.uint64), block)
        return
    tab, steps = table(), _word_steps()
    z_all, t_all = _scratch()
    for k, key in enumerate(keys):
        part = out[k * block : (k + 1) * block]
        words = -(-part.size // LANES)
        for w0 in range(0, words, CHUNK_WORDS):
            m = min(CHUNK_WORDS, words - w0)
            z, t = z_all[:m], t_all[:m]
            np.add(steps[:m], np.uint64((key + w0 * GAMMA) & MASK64), out=z)
            for shift, mult in ((30, M1), (27, M2), (31, None)):
                np.right_shift(z, np.uint64(shift), out=t)
                np.bitwise_xor(z, t, out=z)
                if mult is not None:
                    np.multiply(z, np.uint64(mult), out=z)
            lo = LANES * w0
            hi = min(part.size, lo + LANES * m)
            # every lane is a valid index: "clip" changes none, and skips the copy that
            # "raise" makes of `out`
            np.take(tab, _lanes(z)[: hi - lo], out=part[lo:hi], mode="clip")


@functools.cache
def _word_steps() -> np.ndarray:
    """w·γ (mod 2⁶⁴) for the words of one chunk."""
    return np.arange(CHUNK_WORDS, dtype=np.uint64) * np.uint64(GAMMA)


_local = threading.local()


def _scratch() -> tuple[np.ndarray, np.ndarray]:
    """This thread's two chunk buffers (blocks are drawn in parallel threads)."""
    if not hasattr(_local, "scratch"):
        _local.scratch = (np.empty(CHUNK_WORDS, np.uint64), np.empty(CHUNK_WORDS, np.uint64))
    return _local.scratch


def _lanes(z: np.ndarray) -> np.ndarray:
    if sys.byteorder == "little":
        return z.view(np.uint16)
    lanes = [(z >> np.uint64(16 * j)) & np.uint64(0xFFFF) for j in range(LANES)]
    return np.stack(lanes, 1).reshape(-1)  # lane j of word w at 4w + j, as on little-endian


def fill_torch(keys: list[int], elements: int, device: torch.device) -> torch.Tensor:
    """Unit normals of blocks keyed `keys`, `elements` each, as one flat float32 tensor on
    `device` (int64 arithmetic wraps as uint64 does; shifts are masked to be logical)."""
    words = -(-elements // LANES)
    k = torch.tensor([_signed(x & MASK64) for x in keys], dtype=torch.int64, device=device)
    z = torch.arange(words, dtype=torch.int64, device=device) * _signed(GAMMA)
    z = z.unsqueeze(0) + k.unsqueeze(1)  # (blocks, words)
    z ^= (z >> 30) & ((1 << 34) - 1)
    z *= _signed(M1)
    z ^= (z >> 27) & ((1 << 37) - 1)
    z *= _signed(M2)
    z ^= (z >> 31) & ((1 << 33) - 1)
    lanes = torch.stack([(z >> (16 * j)) & 0xFFFF for j in range(LANES)], dim=-1)
    idx = lanes.view(len(keys), words * LANES)[:, :elements].reshape(-1)
    return _table_on(torch.device(device)).index_select(0, idx)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_kernel_lock = threading.Lock()
_ready = None  # the compiled loop, once loaded (None before, or where it cannot be)
_warming: threading.Thread | None = None


def repays_compiled(draws: int) -> bool:
    """Whether a run of `draws` normals loads numba's loop (and its ~110 MB)."""
    return draws >= COMPILED_MIN_DRAWS


def warm_compiled(draws: int) -> threading.Thread | None:
    """For a run that will draw `draws` normals: load numba's loop in the background when
    that repays its load; `fill` uses it once it is ready. Returns the loading thread."""
    global _warming
    with _kernel_lock:
        if not repays_compiled(draws) or _ready is not None or _warming is not None:
            return None
        _warming = threading.Thread(target=_numba_kernel, name="numba-load", daemon=True)
    _warming.start()
    return _warming


def _loaded_kernel():
    """The compiled loop if it is loaded already (never waits for it)."""
    return _ready


def _numba_kernel():
    """The compiled loop (loaded now if need be), or None where numba is missing or cannot
    compile it."""
    global _ready
    with _kernel_lock:
        _ready = _compile()
        return _ready


@functools.cache
def _compile():
    try:
        import numba
    except Exception:  # noqa: BLE001 - not installed, or broken against this numpy
        return None
    try:
        signature = "void(float32[::1], float32[::1], uint64[::1], int64)"
        return numba.njit(signature, cache=True, nogil=True)(_kernel)
    except Exception:  # noqa: BLE001
        return None


def _kernel(out, tab, keys, block):  # pragma: no cover - compiled by numba
    gamma, m1, m2 = np.uint64(GAMMA), np.uint64(M1), np.uint64(M2)
    s30, s27, s31 = np.uint64(30), np.uint64(27), np.uint64(31)
    s16, s32, s48, low = np.uint64(16), np.uint64(32), np.uint64(48), np.uint64(0xFFFF)
    for k in range(keys.shape[0]):
        key = keys[k]
        start = k * block
        n = min(block, out.shape[0] - start)
        for w in range((n + 3) // 4):
            z = key + np.uint64(w) * gamma
            z = (z ^ (z >> s30)) * m1
            z = (z ^ (z >> s27)) * m2
            z = z ^ (z >> s31)
            i = start + 4 * w
            if 4 * w + 4 <= n:
                out[i] = tab[z & low]
                out[i + 1] = tab[(z >> s16) & low]
                out[i + 2] = tab[(z >> s32) & low]
                out[i + 3] = tab[z >> s48]
            else:
                for j in range(n - 4 * w):
                    out[i + j] = tab[(z >> np.uint64(16 * j)) & low]
