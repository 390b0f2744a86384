"""verify: a correct widening passes in both modes; wrong ones fail and say where."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

# The package exports the function `verify` under the module's name.
import hyperclone_cli.verification as verify_module
import hyperclone_cli.verify_streamed as streamed_module
from hyperclone_cli.checkpoint import Checkpoint, open_checkpoint
from hyperclone_cli.errors import EXIT_VERIFY, HypercloneError, VerificationError
from hyperclone_cli.verification import (
    TOLERANCE_FP32,
    TOLERANCE_HALF,
    VerifyReport,
    default_tolerance,
    stored_dtype,
    verify,
)

N = 2  # widening factor used throughout


def tiny_llama(path: Path, *, tie: bool = False, layers: int = 3, seed: int = 0) -> Path:
    config = tiny.llama_config(
        intermediate_size=64,
        num_hidden_layers=layers,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=tie,
    )
    return tiny.save(config, path, seed=seed, weights=tiny.mild)


def widen_by_hand(src: Path, dst: Path) -> Path:
    """Llama ×N the plain way (head replication), independent of hyperclone's own code."""
    config = json.loads((src / "config.json").read_text())
    tie = config.get("tie_word_embeddings", False)
    wide = {}
    for name, w in load_file(src / "model.safetensors").items():
        if "embed_tokens" in name:
            wide[name] = w.repeat(1, N)  # [E, E]
        elif "norm" in name:
            # Keeping a tie: the final norm carries the lm_head's 1/N instead.
            scale = 1 / N if tie and name == "model.norm.weight" else 1
            wide[name] = w.repeat(N) * scale
        elif name == "lm_head.weight":
            wide[name] = w.repeat(1, N) / N  # input side only
        else:  # q/k/v/o, gate/up/down: both sides widen
            wide[name] = w.repeat(N, N) / N
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        config[key] *= N
    dst.mkdir()
    (dst / "config.json").write_text(json.dumps(config))
    save_file(wide, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def edit_weights(path: Path, edit) -> Path:
    """Apply `edit(state_dict)` to a single-file checkpoint in place."""
    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    src = tiny_llama(root / "src")
    return src, widen_by_hand(src, root / "wide")


def test_correct_widening_passes_in_both_modes_with_the_same_figures(pair):
    src, wide = pair
    full = verify(src, wide, streamed=False)
    streamed = verify(src, wide, streamed=True)

    for report in (full, streamed):
        assert report.passed, report.summary()
        assert report.rel_error < 1e-5
        assert report.kl < 1e-8
        assert report.top1_agreement == 1.0
        assert report.n_tokens == 32
        assert not report.missing_keys and not report.unexpected_keys
    assert full.mode == "full" and full.greedy_match is True and full.layers == []
    assert streamed.mode == "streamed" and streamed.greedy_match is None
    # Same batch, same float32 arithmetic: the two ways of running agree.
    assert streamed.max_abs_diff == pytest.approx(full.max_abs_diff, rel=1e-3, abs=1e-6)
    assert streamed.rel_error == pytest.approx(full.rel_error, rel=1e-3, abs=1e-8)
    assert [c.index for c in streamed.layers] == [0, 1, 2]
    assert all(c.passed and c.rel_error < 1e-5 for c in streamed.layers)
    assert streamed.first_bad_layer is None


def test_streamed_logits_equal_transformers_logits(pair):
    src, wide = pair
    ids = torch.randint(0, tiny.VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    config = AutoModelForCausalLM.from_pretrained(wide).config
    model = streamed_module.empty_model(wide, config)
    assert streamed_module._stream_weights(open_checkpoint(wide), model, "cpu") == ([], [])
    expected = AutoModelForCausalLM.from_pretrained(wide, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(
            verify_module.model_logits(model, ids), expected(ids).logits, atol=1e-5
        )


def test_lost_head_scale_fails_though_greedy_text_matches(pair, tmp_path):
    src, wide = pair
    doubled = copy_checkpoint(wide, tmp_path / "doubled")
    edit_weights(doubled, lambda s: s["lm_head.weight"].mul_(N))  # forgot the 1/N

    full = verify(src, doubled, streamed=False)
    assert not full.passed
    assert full.rel_error == pytest.approx(1.0, rel=1e-3)  # 2·logit - logit
    assert full.greedy_match is True  # why greedy text alone proves nothing
    assert full.top1_agreement == 1.0 and full.kl > 1e-3

    streamed = verify(src, doubled, streamed=True)
    assert not streamed.passed
    assert streamed.rel_error == pytest.approx(full.rel_error, rel=1e-4)
    assert streamed.first_bad_layer is None  # every layer is fine; the head is not
    assert "every decoder layer matches" in streamed.summary()
    with pytest.raises(VerificationError) as err:
        streamed.raise_if_failed()
    assert err.value.code == EXIT_VERIFY and err.value.report is streamed


def test_one_perturbed_weight_fails_and_streamed_names_its_layer(pair, tmp_path):
    src, wide = pair
    bad = copy_checkpoint(wide, tmp_path / "bad")

    def perturb(state):
        w = state["model.layers.1.mlp.down_proj.weight"]
        w[3, 5] += 10 * w.abs().max()

    edit_weights(bad, perturb)

    full = verify(src, bad, streamed=False)
    assert not full.passed and full.rel_error > TOLERANCE_FP32

    streamed = verify(src, bad, streamed=True)
    assert not streamed.passed
    assert streamed.layers[0].passed and not streamed.layers[1].passed
    assert streamed.first_bad_layer == 1
    assert "layer 1 diverged" in streamed.summary()
    assert "model.layers.1.*" in streamed.summary()
    assert streamed.rel_error == pytest.approx(full.rel_error, rel=1e-4)


@pytest.mark.parametrize("streamed", [False, True])
def test_missing_and_unexpected_weights_fail(pair, tmp_path, streamed):
    src, wide = pair
    holes = copy_checkpoint(wide, tmp_path / "holes")

    def damage(state):
        del state["model.layers.0.self_attn.k_proj.weight"]
        state["model.layers.0.extra.weight"] = torch.zeros(3)

    edit_weights(holes, damage)
    report = verify(src, holes, streamed=streamed)
    assert not report.passed
    assert report.missing_keys == ["model.layers.0.self_attn.k_proj.weight"]
    assert report.unexpected_keys == ["model.layers.0.extra.weight"]
    assert "missing model.layers.0.self_attn.k_proj.weight" in report.summary()


def test_tied_head_with_scaled_final_norm_passes(tmp_path):
    src = tiny_llama(tmp_path / "src", tie=True, layers=2)
    wide = widen_by_hand(src, tmp_path / "wide")
    assert "lm_head.weight" not in load_file(wide / "model.safetensors")

    full = verify(src, wide, streamed=False)
    streamed = verify(src, wide, streamed=True)
    assert full.passed and streamed.passed, (full.summary(), streamed.summary())
    # The layer outputs are clones even though the final norm's output is halved.
    assert all(c.passed for c in streamed.layers)
    assert streamed.rel_error == pytest.approx(full.rel_error, rel=1e-3, abs=1e-8)


def test_streamed_reads_sharded_checkpoints(pair, tmp_path):
    src, wide = pair
    model = AutoModelForCausalLM.from_pretrained(wide)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()

    report = verify(src, tmp_path / "sharded", streamed=True)
    assert report.passed, report.summary()


def test_half_precision_gets_the_half_tolerance(pair, tmp_path):
    src, wide = pair
    half_src, half_wide = tmp_path / "src16", tmp_path / "wide16"
    AutoModelForCausalLM.from_pretrained(src).to(torch.bfloat16).save_pretrained(half_src)
    AutoModelForCausalLM.from_pretrained(wide).to(torch.bfloat16).save_pretrained(half_wide)

    assert stored_dtype(wide) == torch.float32 and default_tolerance(wide) == TOLERANCE_FP32
    assert stored_dtype(half_wide) == torch.bfloat16
    assert default_tolerance(half_wide) == TOLERANCE_HALF

    # An fp32 source against its widening rounded to bf16: passes the half tolerance.
    report = verify(src, half_wide)
    assert report.tolerance == TOLERANCE_HALF
    assert report.passed, report.summary()
    assert report.rel_error > TOLERANCE_FP32  # the rounding is real and reported

    # ... but the same rounding with the head's 1/N lost does not.
    edit_weights(half_wide, lambda s: s["lm_head.weight"].mul_(N))
    assert not verify(half_src, half_wide).passed


def test_streams_by_default_and_falls_back_to_full_where_it_cannot(pair, monkeypatch):
    src, wide = pair
    seen = []
    report = verify(src, wide, progress=lambda done, total: seen.append((done, total)))
    assert report.mode == "streamed" and report.passed
    # progress in decoder layers: the source's 3, then the wide model's 3
    assert seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) == 7

    def cannot(*args, **kwargs):
        raise verify_module.CannotStream("streamed verify cannot run this model")

    monkeypatch.setattr(streamed_module, "verify_streamed", cannot)
    memory = namedtuple("memory", "available")
    monkeypatch.setattr(verify_module.psutil, "virtual_memory", lambda: memory(1 << 40))
    seen.clear()
    report = verify(src, wide, progress=lambda done, total: seen.append((done, total)))
    assert report.mode == "full" and report.passed
    assert seen[-1] == (6, 6)
    with pytest.raises(HypercloneError, match="cannot run"):
        verify(src, wide, streamed=True)  # asked for: no fallback
    monkeypatch.setattr(verify_module.psutil, "virtual_memory", lambda: memory(1000))
    with pytest.raises(HypercloneError, match="cannot run"):
        verify(src, wide)  # full mode would not fit in memory


def test_unloadable_checkpoint_raises_one_line(pair, tmp_path):
    src, _ = pair
    with pytest.raises(HypercloneError, match="nowhere: no such directory"):
        verify(src, tmp_path / "nowhere")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(HypercloneError) as err:
        verify(src, broken)
    assert "broken" in str(err.value) and "\n" not in str(err.value)

    no_weights = copy_checkpoint(src, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    for streamed in (False, True):
        with pytest.raises(HypercloneError, match="no_weights"):
            verify(src, no_weights, streamed=streamed)


def test_report_serialises(pair):
    src, wide = pair
    report = verify(src, wide, streamed=True, batch_size=1, seq_len=8)
    data = report.to_dict()
    assert isinstance(report, VerifyReport)
    assert json.loads(json.dumps(data))["layers"][0]["index"] == 0
    assert data["n_tokens"] == 8 and data["summary"].startswith("match")


def test_streamed_holds_one_module_of_weights_at_a_time(pair, monkeypatch):
    src, wide = pair
    models, holders, read_sizes = [], [], []
    stream_weights, read = streamed_module._stream_weights, Checkpoint.read

    def remember(checkpoint, model, device):
        models.append(model)
        return stream_weights(checkpoint, model, device)

    def measure(checkpoint, name, device="cpu", mapped=False):
        holding = [
            module
            for model in models
            for module in model.modules()
            if any(p.device.type != "meta" for p in module.parameters(recurse=False))
        ]
        holders.append(len(holding))
        out = read(checkpoint, name, device, mapped)
        read_sizes.append(out.numel())
        return out

    monkeypatch.setattr(streamed_module, "_stream_weights", remember)
    monkeypatch.setattr(Checkpoint, "read", measure)
    assert verify(src, wide, streamed=True).passed
    assert max(holders) <= 1  # only the module being loaded: the previous one was dropped
    # the largest single weight: the wide embedding or an MLP matrix, whichever is larger
    assert max(read_sizes) == max(tiny.VOCAB * 32 * N, 64 * N * 32 * N)


def test_streamed_reads_pytorch_bin_checkpoints(pair, tmp_path):
    src, wide = pair
    src_bin = tmp_path / "src_bin"
    src_bin.mkdir()
    (src_bin / "config.json").write_text((src / "config.json").read_text())
    torch.save(load_file(src / "model.safetensors"), src_bin / "pytorch_model.bin")

    streamed = verify(src_bin, wide, streamed=True)
    full = verify(src_bin, wide, streamed=False)
    assert streamed.passed and full.passed
    assert streamed.max_abs_diff == pytest.approx(full.max_abs_diff, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_large_head_and_embedding_run_by_row_blocks(tmp_path, monkeypatch, tie):
    """A Linear or Embedding over ROWS_BYTES reads its weight in row blocks as it runs (a
    large vocabulary's lm_head is never whole in memory): same figures as whole weights,
    and a wrong head still fails."""
    src = tiny_llama(tmp_path / "src", tie=tie)
    wide = widen_by_hand(src, tmp_path / "wide")
    whole = verify(src, wide, streamed=True)
    rows = []
    read_rows = Checkpoint.read_rows

    def count(checkpoint, name, r0, r1, device="cpu", mapped=False):
        out = read_rows(checkpoint, name, r0, r1, device, mapped)
        rows.append((name, out.shape[0], 4 * out.numel()))
        return out

    monkeypatch.setattr(Checkpoint, "read_rows", count)
    row_bytes = 4 * 32 * N  # one row of the wide embedding / head (hidden 32·N)
    monkeypatch.setattr(streamed_module, "ROWS_BYTES", 7 * row_bytes)  # 7 rows a block
    blocks = verify(src, wide, streamed=True)
    assert blocks.passed, blocks.summary()
    assert blocks.max_abs_diff == pytest.approx(whole.max_abs_diff, rel=1e-3, abs=1e-6)
    assert blocks.rel_error < 1e-5 and blocks.top1_agreement == 1.0
    head = "model.embed_tokens.weight" if tie else "lm_head.weight"
    assert {n for n, _, _ in rows} >= {head, "model.embed_tokens.weight"}
    assert max(b for _, _, b in rows) <= 7 * row_bytes  # no weight read whole
    assert sum(k for n, k, _ in rows if n == head) >= 2 * tiny.VOCAB  # both heads, every row

    doubled = copy_checkpoint(wide, tmp_path / "doubled")
    edit_weights(doubled, lambda s: s[head].mul_(N) if not tie else s["model.norm.weight"].mul_(N))
    assert not verify(src, doubled, streamed=True).passed


def test_forward_threads_leave_out_the_cores_busy_now(tmp_path, monkeypatch):
    """The runnable threads of /proc/loadavg (less the caller) are the busy cores, not the
    1-minute average that still counts expand's own writing just before."""
    import hyperclone_cli.verification as verification

    monkeypatch.setattr(verification.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(verification.torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(verification.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(verification, "LOADAVG", loadavg)
    for running, threads in [(1, 4), (2, 3), (4, 1), (30, 1)]:
        loadavg.write_text(f"9.00 9.00 9.00 {running}/412 5521\n")
        assert verification._idle_cores() == threads
    loadavg.unlink()  # not Linux: the load average
    assert verification._busy_cores() == 9 and verification._idle_cores() == 1


class _Node:
    me: object = None


def test_warm_up_imports_without_collections_and_freezes_what_stays(pair):
    """No collection while the imports run; after them one collection (the garbage goes),
    then what stays is frozen out of later collections, and collecting is back on."""
    import gc
    import weakref

    import hyperclone_cli.verification as verification

    src, _ = pair
    kept: list[list] = []
    try:
        with verification._no_collection():
            assert not gc.isenabled()
            kept.append([[i] for i in range(1000)])
            cycle = _Node()
            cycle.me = cycle
            gone = weakref.ref(cycle)
            del cycle
        assert gc.isenabled()
        assert gone() is None  # garbage collected once at the end, not frozen
        assert gc.get_freeze_count() >= 1000  # the lists that stay
        verification.warm_up(src).join()
        assert gc.isenabled()
    finally:
        gc.unfreeze()


def test_warm_up_lets_the_writers_have_the_gil_back_soon_while_it_imports(pair, monkeypatch):
    """While the imports run, a thread waiting for the GIL gets it within
    IMPORT_SWITCH_INTERVAL (not Python's 5 ms); the interval is restored when they end."""
    import sys
    import threading

    import hyperclone_cli.verification as verification

    src, _ = pair
    seen: list[float] = []
    release = threading.Event()
    real = verification._load_config

    def held(path):  # inside the import thread: note the interval, then go on
        seen.append(sys.getswitchinterval())
        release.wait(10)
        return real(path)

    monkeypatch.setattr(verification, "_load_config", held)
    before = sys.getswitchinterval()
    short = pytest.approx(min(before, verification.IMPORT_SWITCH_INTERVAL), rel=1e-3)
    thread = verification.warm_up(src)
    try:
        assert sys.getswitchinterval() == short  # (kept in whole microseconds)
    finally:
        release.set()
        thread.join()
    assert seen == [short]
    assert sys.getswitchinterval() == before
