"""Noise: the same bytes for a seed at any chunking, thread count and worker count; zero
sum over the copies of a column; the asked SNR."""

import contextlib
import hashlib
import importlib.util

import numpy as np
import pytest
import torch

from hyperclone_cli import noise as noise_mod
from hyperclone_cli import normals
from hyperclone_cli.clone import (
    IN,
    OUT,
    AxisMap,
    Noise,
    interleave_map,
    noise_requests,
    tile_map,
    widen_full,
)
from hyperclone_cli.noise import NOISE_VERSION, NoiseBank, NoiseStream, noise_std


def axes_for(rows, cols, n, cols_map="tile"):
    idx = tile_map(cols, n) if cols_map == "tile" else interleave_map(cols, n, 4)
    return (AxisMap(tile_map(rows, n), rows, OUT), AxisMap(idx, cols, IN))


def weights(rows=300, cols=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.05).to(dtype)


def as_bytes(t):
    return t.contiguous().view(-1).view(torch.uint8)


CASES = [(2, "tile"), (3, "tile"), (2, "interleave"), (4, "interleave")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,cols_map", CASES)
def test_chunk_size_does_not_change_bytes(dtype, n, cols_map):
    w = weights(dtype=dtype)  # several logical noise blocks: 300·n rows of 64·n
    axes = axes_for(300, 64, n, cols_map)
    kw = dict(noise=Noise(10.0, 0), tensor_seed=11)
    whole = widen_full(w, axes, **kw)
    for chunk in (1, 64 * n * 7, 1 << 14):
        assert torch.equal(
            as_bytes(widen_full(w, axes, max_chunk_elements=chunk, **kw)), as_bytes(whole)
        )


def test_any_row_range_matches_the_whole_stream():
    for idx, src in ((tile_map(64, 2), 64), (tile_map(64, 3), 64), (torch.tensor([0, 1, 1, 2]), 3)):
        s = NoiseStream((2000, idx.numel()), idx, src, 0.5, tensor_seed=3)
        whole = s.rows(0, 2000)
        for r0, r1 in ((0, 1), (5, 1500), (1999, 2000), (1023, 1025)):
            assert torch.equal(s.rows(r0, r1), whole[r0:r1])


def test_thread_and_worker_count_do_not_change_bytes(monkeypatch):
    w = weights(rows=1000, cols=96)
    axes = axes_for(1000, 96, 2)
    kw = dict(noise=Noise(10.0, 0), tensor_seed=4, max_chunk_elements=1 << 16)
    threads = torch.get_num_threads()
    got = []
    try:
        for t, workers in ((1, 1), (2, 1), (1, 4), (2, 8)):
            torch.set_num_threads(t)
            monkeypatch.setattr(noise_mod, "WORKERS", workers)
            got.append(as_bytes(widen_full(w, axes, **kw)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, got[0]) for g in got)


@pytest.mark.parametrize("n,cols_map", CASES)
def test_zero_sum_over_the_copies_of_a_column(n, cols_map):
    idx = axes_for(300, 64, n, cols_map)[1].idx
    eta = NoiseStream((600, 64 * n), idx, 64, 0.1, tensor_seed=1).rows(0, 600)
    sums = torch.zeros(600, 64).index_add_(1, idx, eta)
    limit = 0.0 if n == 2 else 1e-7  # +η, −η cancel exactly; n draws minus their mean to rounding
    assert sums.abs().max().item() <= limit
    assert not torch.equal(eta[:300], eta[300:])  # fresh noise for every row block
    w = weights(dtype=torch.float32)
    axes = axes_for(300, 64, n, cols_map)
    wide = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=1)
    x = torch.randn(64)
    torch.testing.assert_close(wide @ x[idx], (w @ x).repeat(n), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n,cols_map", CASES + [(2, "uneven")])
def test_snr_is_the_asked_one(n, cols_map):
    w = weights(rows=600, cols=64, dtype=torch.float32)
    if cols_map == "uneven":
        idx = torch.cat([torch.arange(32), tile_map(32, 3) + 32])
        axes = (AxisMap(tile_map(600, 2), 600, OUT), AxisMap(idx, 64, IN))
        n = 2  # nominal factor used for the signal, as noise_std is told
    else:
        axes = axes_for(600, 64, n, cols_map)
    for snr in (10.0, 20.0):
        clean = widen_full(w, axes)
        eta = widen_full(w, axes, noise=Noise(snr, 0), tensor_seed=2) - clean
        if cols_map == "uneven":
            want = (w / n).pow(2).mean() / 10 ** (snr / 10)
            assert 0.4 < (eta.pow(2).mean() / want).item() < 1.1  # single columns get none
            continue
        got = 10 * torch.log10(clean.pow(2).mean() / eta.pow(2).mean()).item()
        assert abs(got - snr) < 0.1


def test_seed_gives_bytes():
    w = weights()
    axes = axes_for(300, 64, 2)
    a = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=1)
    b = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=1)
    c = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=2)
    assert torch.equal(as_bytes(a), as_bytes(b)) and not torch.equal(a, c)


def test_noise_std_is_rounded_and_order_free():
    w = weights(rows=5000, cols=77, dtype=torch.float32)
    std = noise_std(w, 2, 10.0)
    want = ((w / 2).double().pow(2).mean() / 10).sqrt().item()
    assert abs(std / want - 1) < 2**-11
    assert noise_std(w.flip(0), 2, 10.0) == std  # summation order cannot move it


def test_stream_is_pinned():
    """The bytes of one small stream. If this fails, the noise stream changed (torch's
    generator, the block layout, the seeding): bump NOISE_VERSION and update the digest."""
    w = weights(rows=40, cols=16)
    got = widen_full(w, axes_for(40, 16, 2), noise=Noise(10.0, 0), tensor_seed=9)
    digest = hashlib.sha256(as_bytes(got).numpy().tobytes()).hexdigest()[:16]
    assert (NOISE_VERSION, digest) == ("3", DIGEST)


DIGEST = "e04f8aa2d5512df0"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("noise", [None, Noise(10.0, 0)])
@pytest.mark.parametrize("n,cols_map", CASES)
def test_cuda_gives_the_cpu_bytes(n, cols_map, noise):
    w = weights(rows=700, cols=96)
    axes = axes_for(700, 96, n, cols_map)
    kw = dict(noise=noise, tensor_seed=6, max_chunk_elements=1 << 14)
    on_cpu = widen_full(w, axes, **kw)
    on_cuda = widen_full(w.cuda(), axes, **kw).cpu()
    assert torch.equal(as_bytes(on_cuda), as_bytes(on_cpu))


@needs_cuda
@pytest.mark.parametrize("noise", [None, 10.0])
def test_expand_on_cuda_writes_the_cpu_files(tmp_path, noise):
    from tiny import llama_config, save

    from hyperclone_cli.pipeline import expand

    src = save(llama_config(), tmp_path / "src", dtype=torch.bfloat16)
    kw = dict(factor=2, noise=noise, seed=1, verify=False, shard_size="100KB")
    on_cpu = expand(src, tmp_path / "cpu", device="cpu", **kw)
    on_cuda = expand(src, tmp_path / "cuda", device="cuda", **kw)
    assert on_cuda.device.startswith("cuda") and len(on_cpu.shards) > 1
    assert [s.sha256 for s in on_cuda.shards] == [s.sha256 for s in on_cpu.shards]


# --- the bank: draws made ahead, the same bytes -------------------------------------------


def widen_with_bank(jobs, budget, ask=None):
    """Widen (w, axes, seed, chunk) jobs with one NoiseBank foreseeing all of them; `ask`:
    the jobs actually widened (default: all)."""
    requests = [r for _, axes, seed, chunk in jobs for r in noise_requests(axes, seed, chunk)]
    with NoiseBank(requests, budget) as bank:
        out = [
            widen_full(
                w, axes, noise=Noise(10.0, 0), tensor_seed=seed, max_chunk_elements=chunk, bank=bank
            )  # fmt: skip
            for w, axes, seed, chunk in (ask or jobs)
        ]
    return out, bank


def bank_jobs():
    jobs = []
    for k, (n, cols_map) in enumerate(CASES):
        w = weights(rows=300, cols=64, dtype=torch.float32, seed=k)
        jobs.append((w, axes_for(300, 64, n, cols_map), 20 + k, 64 * n * 40))
    w = weights(rows=64, cols=300, dtype=torch.float32)  # the input side on axis 0 (Conv1D)
    jobs.append(
        (w, (AxisMap(tile_map(64, 2), 64, IN), AxisMap(tile_map(300, 2), 300, OUT)), 9, 999)
    )
    return jobs


@pytest.mark.parametrize("budget", [1, 1 << 12, 1 << 30])
def test_bank_gives_the_bytes_drawn_on_demand(budget):
    jobs = bank_jobs()
    want = [widen_full(w, a, noise=Noise(10.0, 0), tensor_seed=s, max_chunk_elements=c)
            for w, a, s, c in jobs]  # fmt: skip
    got, bank = widen_with_bank(jobs, budget)
    assert all(torch.equal(as_bytes(g), as_bytes(x)) for g, x in zip(got, want, strict=True))
    assert bank.error is None and bank.served == len(bank.requests) > len(jobs)  # all from it


def test_bank_skips_what_is_not_asked_and_draws_nothing_twice():
    jobs = bank_jobs()
    ask = [jobs[3], jobs[1]]  # out of order, and most never asked: no deadlock, same bytes
    got, bank = widen_with_bank(jobs, 1 << 12, ask)
    for g, (w, a, s, c) in zip(got, ask, strict=True):
        want = widen_full(w, a, noise=Noise(10.0, 0), tensor_seed=s, max_chunk_elements=c)
        assert torch.equal(as_bytes(g), as_bytes(want))
    assert bank.error is None and 0 < bank.served < len(bank.requests)
    assert not bank.ready and bank.held == 0


def test_expand_draws_its_noise_from_the_bank(tmp_path, monkeypatch):
    from tiny import llama_config, save

    from hyperclone_cli import pipeline

    src = save(llama_config(), tmp_path / "src", dtype=torch.bfloat16)
    kw = dict(factor=2, noise=10.0, seed=1, verify=False, shard_size="100KB", device="cpu")
    banks = []
    real = pipeline.noise_bank

    def spy(*a):
        with real(*a) as bank:
            banks.append(bank)
            yield bank

    monkeypatch.setattr(pipeline, "noise_bank", contextlib.contextmanager(spy))
    with_bank = pipeline.expand(src, tmp_path / "bank", **kw)
    bank = banks[0]
    assert bank is not None and bank.error is None and bank.served == len(bank.requests) > 10
    monkeypatch.setattr(pipeline, "noise_bank", lambda *a: contextlib.nullcontext())
    without = pipeline.expand(src, tmp_path / "plain", **kw)
    assert [s.sha256 for s in with_bank.shards] == [s.sha256 for s in without.shards]


# --- the generator: one stream from three implementations -----------------------------


def numpy_only(monkeypatch):
    monkeypatch.setattr(normals, "_loaded_kernel", lambda: None)


def compiled_always(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(normals, "_loaded_kernel", normals._numba_kernel)


def test_table_is_pinned():
    """The quantile table: if this fails, a value moved (Python's inverse CDF changed?):
    the noise bytes change with it; bump NOISE_VERSION."""
    tab = normals.table()
    assert hashlib.sha256(tab.tobytes()).hexdigest()[:16] == TABLE_DIGEST
    assert abs(float(tab.astype("float64").std()) - 1) < 1e-6 and tab[0] == -tab[-1]


TABLE_DIGEST = "8babbcaf96568f10"


@pytest.mark.parametrize(
    "elements", [1, 3, 4, 5, 1000, 65535, 65536, 4 * normals.CHUNK_WORDS + 5, 300_001]
)
def test_numba_numpy_and_torch_give_the_same_bits(elements):
    pytest.importorskip("numba")
    keys = [0, 12345, (1 << 63) + 77, (1 << 64) - 1]
    compiled = np.empty(elements * len(keys) - 1, np.float32)  # the last block one shorter
    normals.fill(compiled, keys, elements, engine="numba")
    plain = np.empty_like(compiled)  # numpy's chunks: several per block from 4·CHUNK_WORDS
    normals.fill(plain, keys, elements, engine="numpy")
    cpu = torch.device("cpu")
    on_torch = torch.cat(
        [
            normals.fill_torch(keys[:-1], elements, cpu),
            normals.fill_torch(keys[-1:], elements - 1, cpu),
        ]
    )
    assert plain.tobytes() == compiled.tobytes() == on_torch.numpy().tobytes()
    one = np.empty(elements, np.float32)  # a block alone is the same as within a run
    normals.fill(one, keys[1:2], elements, engine="numpy")
    assert one.tobytes() == plain[elements : 2 * elements].tobytes()


def test_blocks_drawn_as_on_a_gpu_match(monkeypatch):
    """draw_blocks_on (what a GPU runs, here on the CPU) against draw_blocks, a short last
    block included; and the numbers look normal and independent across blocks."""
    for rows in (1000, 1024):
        req = noise_mod.Request((7, (64,), 0, -(-rows // 1024)), 1024, rows)
        on_cpu = noise_mod.draw_blocks(req)
        as_gpu = noise_mod.draw_blocks_on(req, torch.device("cpu"))
        assert torch.equal(on_cpu.view(torch.int32), as_gpu.view(torch.int32))
    x = noise_mod.draw_blocks(noise_mod.Request((3, (1024,), 0, 16), 64, 1024)).view(16, -1)
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    corr = torch.corrcoef(x)
    assert (corr - torch.eye(16)).abs().max().item() < 0.03  # blocks are not copies


def test_numpy_fallback_writes_the_same_checkpoint(tmp_path, monkeypatch):
    from tiny import llama_config, save

    from hyperclone_cli.pipeline import expand

    src = save(llama_config(), tmp_path / "src", dtype=torch.bfloat16)
    kw = dict(factor=2, noise=10.0, seed=1, verify=False, device="cpu")
    with monkeypatch.context() as m:
        compiled_always(m)
        fast = expand(src, tmp_path / "numba", **kw)
    numpy_only(monkeypatch)
    plain = expand(src, tmp_path / "numpy", **kw)
    assert [s.sha256 for s in fast.shards] == [s.sha256 for s in plain.shards]


def test_numba_loads_only_for_runs_that_repay_it(monkeypatch):
    """A small run never loads numba; a large one loads it in the background, once, and
    the draws switch to it (same bits) when it is ready."""
    monkeypatch.setattr(normals, "_ready", None)
    monkeypatch.setattr(normals, "_warming", None)
    assert normals.warm_compiled(normals.COMPILED_MIN_DRAWS - 1) is None
    assert normals._loaded_kernel() is None
    before = np.empty(1001, np.float32)
    normals.fill(before, [5], 1001)  # numpy, not waiting for anything
    loading = normals.warm_compiled(normals.COMPILED_MIN_DRAWS)
    assert loading is not None
    assert normals.warm_compiled(normals.COMPILED_MIN_DRAWS) is None  # once
    loading.join()
    if importlib.util.find_spec("numba") is not None:
        assert normals._loaded_kernel() is not None
    after = np.empty(1001, np.float32)
    normals.fill(after, [5], 1001)
    assert before.tobytes() == after.tobytes()


def test_lanes_by_shifts_match_the_little_endian_view(monkeypatch):
    """The big-endian route (shifts and masks) orders lanes as the view does."""
    z = np.array([0x0123456789ABCDEF, 0xFEDCBA9876543210, 7], dtype=np.uint64)
    view = normals._lanes(z).copy()
    monkeypatch.setattr(normals.sys, "byteorder", "big")
    shifted = normals._lanes(z)
    assert shifted.shape == view.shape and np.array_equal(shifted.astype(np.uint64), view)
