"""The math, pinned on hand-checkable tensors."""

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
    widen_full,
)


def axis(idx, side):
    return AxisMap(idx, int(idx.max()) + 1, side)


W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


def test_maps():
    assert tile_map(3, 2).tolist() == [0, 1, 2, 0, 1, 2]
    assert interleave_map(4, 2, 2).tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    assert identity_map(3).tolist() == [0, 1, 2]
    assert multiplicity(tile_map(3, 2), 3).tolist() == [2, 2, 2]
    assert copy_rank(tile_map(2, 3)).tolist() == [0, 0, 1, 1, 2, 2]


def test_input_only_divides_columns():
    got = widen_full(W, (axis(identity_map(2), OUT), axis(tile_map(2, 2), IN)))
    assert torch.equal(got, torch.tensor([[0.5, 1.0, 0.5, 1.0], [1.5, 2.0, 1.5, 2.0]]))


def test_output_only_repeats_rows_and_bias():
    got = widen_full(W, (axis(tile_map(2, 2), OUT), axis(identity_map(2), IN)))
    assert torch.equal(got, torch.cat([W, W]))
    b = torch.tensor([5.0, 6.0])
    assert torch.equal(widen_full(b, (axis(tile_map(2, 2), OUT),)), torch.tensor([5.0, 6, 5, 6]))


def test_both_sides_symmetric_grid():
    got = widen_full(W, (axis(tile_map(2, 2), OUT), axis(tile_map(2, 2), IN)))
    half = W / 2
    assert torch.equal(got, torch.cat([torch.cat([half, half], 1)] * 2))


def test_both_sides_diagonal():
    got = widen_full(W, (axis(tile_map(2, 2), OUT), axis(tile_map(2, 2), IN)), diagonal=True)
    z = torch.zeros_like(W)
    assert torch.equal(got, torch.cat([torch.cat([W, z], 1), torch.cat([z, W], 1)]))


def test_cloned_input_gives_cloned_output():
    torch.manual_seed(0)
    w, x = torch.randn(5, 3), torch.randn(3)
    for n in (2, 3, 4):
        for diagonal in (False, True):
            wide = widen_full(
                w, (axis(tile_map(5, n), OUT), axis(tile_map(3, n), IN)), diagonal=diagonal
            )
            torch.testing.assert_close(wide @ x.repeat(n), (w @ x).repeat(n))


def test_noise_cancels_and_breaks_symmetry():
    torch.manual_seed(0)
    w, x = torch.randn(6, 4), torch.randn(4)
    for n in (2, 3):
        axes = (axis(tile_map(6, n), OUT), axis(tile_map(4, n), IN))
        wide = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=7)
        clean = widen_full(w, axes)
        assert not torch.equal(wide, clean)
        torch.testing.assert_close(wide @ x.repeat(n), (w @ x).repeat(n), atol=1e-5, rtol=1e-5)
        rows = wide.view(n, 6, n * 4)
        assert not torch.equal(rows[0], rows[1])  # copies of an output unit differ
        eta = wide - clean
        snr = 10 * torch.log10(clean.pow(2).mean() / eta.pow(2).mean())
        assert abs(snr.item() - 10.0) < 1.5  # the asked SNR, up to sampling


def test_noise_is_seeded():
    w = torch.randn(4, 4)
    axes = (axis(tile_map(4, 2), OUT), axis(tile_map(4, 2), IN))
    a = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=1)
    b = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=1)
    c = widen_full(w, axes, noise=Noise(10.0, 0), tensor_seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_chunking_does_not_change_bytes():
    w = torch.randn(37, 11)
    axes = (axis(tile_map(37, 2), OUT), axis(tile_map(11, 2), IN))
    whole = widen_full(w, axes, noise=Noise(20.0, 0), tensor_seed=3)
    again = widen_full(w, axes, noise=Noise(20.0, 0), tensor_seed=3)
    chunked = widen_full(w, axes, max_chunk_elements=22 * 5)
    assert torch.equal(whole, again)
    assert torch.equal(chunked, widen_full(w, axes))


def test_scale_and_offset_norm():
    g = torch.tensor([0.5, -0.25])  # Gemma-style: gain is (1 + g)
    got = widen_full(g, (axis(tile_map(2, 2), OUT),), scale=0.5, offset=1.0)
    torch.testing.assert_close(1 + got, (1 + g).repeat(2) * 0.5)


def test_kv_keep_interleave_keeps_grouping():
    # 4 query heads of dim 1 over 2 KV heads; n = 2 with copies side by side.
    H, G, n = 4, 2, 2
    q_map = interleave_map(H, n, 1)
    assert q_map.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    wide_group = (n * H) // G
    for i, src_head in enumerate(q_map.tolist()):
        assert i // wide_group == src_head // (H // G)


def test_bfloat16_rounds_once():
    w = torch.randn(8, 8).to(torch.bfloat16)
    axes = (axis(tile_map(8, 3), OUT), axis(tile_map(8, 3), IN))
    got = widen_full(w, axes)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got[:8, :8], (w.float() / 3).to(torch.bfloat16))


def test_index_map_work_is_done_once_per_map_contents():
    """Every layer has its own index tensors with the same contents: their runs and copy
    layouts are worked out once, and what a caller gets is its own copy."""
    from hyperclone_cli import fastpath, noise

    fastpath._runs.cache_clear()
    noise._copy_layout.cache_clear()
    a, b = tile_map(6, 2), tile_map(6, 2)
    assert a is not b
    got = fastpath.runs(a)
    assert got == [(0, 0, 6), (6, 0, 6)]
    got.append((99, 99, 99))
    assert fastpath.runs(b) == [(0, 0, 6), (6, 0, 6)]
    assert fastpath._runs.cache_info().hits == 1
    assert noise.copy_layout(a, 6) == noise.copy_layout(b.to(torch.int32), 6) == (1, 2, 6)
    assert noise._copy_layout.cache_info().hits == 1
    assert noise.copy_layout(a, 4) is None  # the source size is part of the key
    assert fastpath.runs(torch.empty(0, dtype=torch.int64)) == []
