"""clone.widen's fast routes (block copies instead of gathers, bf16/fp16 kept in their
dtype when only powers of two multiply them) must give the bytes of the plain route:
gather with index_select, compute in float32, cast once. Pinned here on awkward values."""

import itertools
import math

import pytest
import torch

from hyperclone_cli.clone import (
    IN,
    OUT,
    AxisMap,
    Noise,
    copy_rank,
    identity_map,
    interleave_map,
    multiplicity,
    tile_map,
    widen,
)
from hyperclone_cli.noise import NoiseStream, noise_std


def reference(w, axes, *, scale=1.0, offset=0.0, diagonal=False, noise=None, tensor_seed=0,
              out_dtype=None, max_chunk_elements=1 << 24):  # fmt: skip
    """The plain route, written out: every chunk gathered, upcast, computed, cast once."""
    out_dtype = out_dtype or w.dtype
    work = torch.float64 if w.dtype == torch.float64 else torch.float32
    in_axes = [k for k, a in enumerate(axes) if a.side == IN and a.widened]
    in_axis = in_axes[0] if in_axes else None
    idxs = [a.idx for a in axes]
    shape_t = tuple(a.target_size for a in axes)
    row_elems = math.prod(shape_t[1:])
    rows = shape_t[0]
    chunk = rows if in_axis == 0 else max(1, min(rows, max_chunk_elements // max(row_elems, 1)))
    stream = None
    if noise is not None and in_axis is not None:
        std = noise_std(w, axes[in_axis].factor, noise.snr_db)
        shape = tuple(a.target_size for k, a in enumerate(axes) if k != in_axis)
        shape += (axes[in_axis].target_size,)
        stream = NoiseStream(shape, axes[in_axis].idx, axes[in_axis].source_size, std, tensor_seed)
    in_div = None
    if in_axis is not None:
        in_div = multiplicity(axes[in_axis].idx, axes[in_axis].source_size).to(work)[idxs[in_axis]]
    out = []
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        c = w.index_select(0, idxs[0][r0:r1]).to(work)
        for k in range(1, w.dim()):
            c = c.index_select(k, idxs[k])
        if offset:
            c = c + offset
        if in_div is not None:
            shape = [1] * c.dim()
            shape[in_axis] = -1
            o = [k for k, a in enumerate(axes) if a.side == OUT and a.widened]
            if diagonal and o:
                shape_o = [1] * c.dim()
                shape_o[o[0]] = -1
                orank = copy_rank(axes[o[0]].idx)
                orank = orank[r0:r1] if o[0] == 0 else orank
                keep = (orank.view(shape_o) % in_div.view(shape).long()) == copy_rank(
                    axes[in_axis].idx
                ).view(shape)
                c = c * keep.to(work)
            else:
                c = c / in_div.view(shape)
        if stream is not None:
            eta = stream.rows(r0, r1) if in_axis != 0 else stream.rows(0, stream.shape[0])
            c = c + eta.movedim(-1, in_axis).to(work)
        if scale != 1.0:
            c = c * scale
        if offset:
            c = c - offset
        out.append(c.to(out_dtype).contiguous())
    return out


def awkward(shape, dtype, seed):
    """Normal values across many binades, plus subnormals, ±0, ±inf and NaNs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-20, 20, shape, generator=g))
    x = x.to(dtype)
    flat = x.view(-1)
    tiny = torch.finfo(dtype).smallest_normal if dtype.is_floating_point else 0
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, tiny / 2, -tiny / 4, tiny / 64]
    for i, v in enumerate(specials):
        if i * 7 < flat.numel():
            flat[i * 7] = v
    if dtype in (torch.bfloat16, torch.float16) and flat.numel() > 60:
        bits = flat.view(torch.int16)
        bits[60] = 0x7FC1 if dtype == torch.bfloat16 else 0x7E01  # a NaN with a payload
    return x


def maps(size, kind, n=2, block=4):
    if kind == "tile":
        return AxisMap(tile_map(size, n), size, OUT)
    if kind == "interleave":
        return AxisMap(interleave_map(size, n, block), size, OUT)
    if kind == "fused":  # two parts, each tiled in its own place (e.g. [q | kv])
        a, b = size // 2, size - size // 2
        return AxisMap(torch.cat([tile_map(a, n), tile_map(b, n) + a]), size, OUT)
    if kind == "uneven":  # copies per index differ: 1 and 4 (divisors 1 and 4)
        h = size // 2
        return AxisMap(torch.cat([identity_map(h), tile_map(size - h, 4) + h]), size, OUT)
    return AxisMap(identity_map(size), size, OUT)


def side(a, s):
    return AxisMap(a.idx, a.source_size, s)


def same(got, want):
    """Same bytes; chunk boundaries may differ (noise computes whole noise blocks)."""
    g, w = torch.cat([c.reshape(-1) for c in got]), torch.cat([c.reshape(-1) for c in want])
    assert g.dtype == w.dtype and g.shape == w.shape
    assert torch.equal(g.view(torch.uint8), w.view(torch.uint8))


KINDS = ["tile", "interleave", "fused", "uneven", "identity"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows_kind,cols_kind", list(itertools.product(KINDS, KINDS)))
def test_matrix_bytes_match_the_float32_route(dtype, rows_kind, cols_kind):
    w = awkward((16, 12), dtype, seed=KINDS.index(rows_kind) * 7 + KINDS.index(cols_kind))
    axes = (maps(16, rows_kind), side(maps(12, cols_kind), IN))
    for x in (w, torch.nan_to_num(w)):  # all finite: the half-precision route
        for scale, diagonal, chunk in [(1.0, False, 1 << 24), (0.5, False, 40), (0.25, True, 64)]:
            kw = dict(scale=scale, diagonal=diagonal, max_chunk_elements=chunk)
            same(list(widen(x, axes, **kw)), reference(x, axes, **kw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows_kind", KINDS)
def test_input_side_on_rows_matches(dtype, rows_kind):
    """GPT-2's Conv1D stores the widened input side as axis 0."""
    w = torch.nan_to_num(awkward((12, 10), dtype, seed=KINDS.index(rows_kind)))
    axes = (side(maps(12, rows_kind), IN), maps(10, "tile"))
    for scale in (1.0, 0.5):
        same(list(widen(w, axes, scale=scale)), reference(w, axes, scale=scale))


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(scale=1 / math.sqrt(2)),
        dict(scale=3.0),
        dict(scale=2.0**-20),
        dict(offset=1.0),
        dict(noise=Noise(10.0, 0), tensor_seed=7),
        dict(out_dtype=torch.float32),
        dict(out_dtype=torch.bfloat16),
        dict(scale=0.5, out_dtype=torch.float16),
    ],
)
def test_other_routes_match(dtype, kw):
    w = awkward((10, 8), dtype, seed=3)
    if "noise" in kw:
        w = torch.nan_to_num(w, nan=0.0, posinf=1.0, neginf=-1.0)  # noise std needs finite
    axes = (maps(10, "tile"), side(maps(8, "tile"), IN))
    kw = kw | {"max_chunk_elements": 48}
    same(list(widen(w, axes, **kw)), reference(w, axes, **kw))
    vec = awkward((10,), dtype, seed=4)
    same(list(widen(vec, (maps(10, "tile"),), **kw)), reference(vec, (maps(10, "tile"),), **kw))


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("cols_kind", ["tile", "interleave", "fused", "uneven"])
@pytest.mark.parametrize("n", [2, 3])
def test_noise_routes_match(dtype, cols_kind, n):
    """The paired (+η, −η) route and the others against the reference, any chunking."""
    w = torch.nan_to_num(awkward((40, 24), dtype, seed=n), nan=0.0, posinf=1.0, neginf=-1.0)
    axes = (maps(40, "tile", n=n), side(maps(24, cols_kind, n=n), IN))
    for chunk in (100, 1 << 24):
        kw = dict(noise=Noise(10.0, 0), tensor_seed=5, max_chunk_elements=chunk)
        same(list(widen(w, axes, **kw)), reference(w, axes, **kw))
    conv1d = (side(maps(24, cols_kind, n=n), IN), maps(40, "tile", n=n))  # input side on rows
    kw = dict(noise=Noise(10.0, 0), tensor_seed=5)
    same(list(widen(w.T.contiguous(), conv1d, **kw)), reference(w.T.contiguous(), conv1d, **kw))


def test_pure_copy_keeps_nan_canonicalisation():
    """A bf16 tensor that is only copied went through float32 before: NaN payloads come out
    canonical. Keep that byte for byte."""
    w = awkward((8, 6), torch.bfloat16, seed=5)
    axes = (maps(8, "tile"), maps(6, "tile"))
    same(list(widen(w, axes)), reference(w, axes))


def test_every_bf16_and_fp16_value_halves_exactly():
    """Exhaustive: every finite bit pattern (subnormals too), divided by 2, 4 and 8 as the
    both-sides block."""
    for dtype in (torch.bfloat16, torch.float16):
        w = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
        w = torch.where(w.isfinite(), w, torch.zeros((), dtype=dtype)).view(256, 256)
        for n in (2, 4, 8):
            axes = (AxisMap(tile_map(256, n), 256, OUT), AxisMap(tile_map(256, n), 256, IN))
            kw = dict(max_chunk_elements=1 << 20)
            same(list(widen(w, axes, **kw)), reference(w, axes, **kw))
