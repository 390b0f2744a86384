"""Reliability, end to end through the real CLI: hostile and broken inputs, bad options and
destinations, interrupted runs, full disks, failed verification, reproducible output.

Every case runs `python -m hyperclone_cli` in a subprocess, so exit codes, signals and
stderr are the real ones, and checks the same contract:
- the exit code is the documented one, stderr is exactly one line naming the file or
  option, and no traceback reaches the user;
- nothing is left behind: no DST, no `.DST.hyperclone-*` temporary directory;
- the source's bytes (sha256 of every file) are the same after the run as before.

Speed: starting Python and importing torch costs ~2 s per run, too much for ~70 runs on a
shared 2-core machine. So most cases run in a process forked from a "zygote" that has
already imported the package (tests/cli_process.py): still a separate process with its own stdout,
stderr (file descriptors 1 and 2) and exit status, running `cli.main` as
`python -m hyperclone_cli` does. Signals, resource limits, dropped privileges and the
`--debug` traceback use a fresh `python -m hyperclone_cli` (`real=True`);
HYPERCLONE_TEST_REAL=1 runs every case that way.

A few faults cannot be produced on demand by a plain run (a write that is slow enough to
interrupt, a disk that fills after the free-space check, a shard corrupted by the disk);
for those the process first executes a patch of one function (`patch=`), then the same
entry point. Nothing in the product reads a test-only switch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cli_process
import pytest
import tiny
import torch
from cli_process import ENV, WRAPPER, run, tree_hashes
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module", autouse=True)
def zygote():
    cli_process.start()
    yield
    cli_process.stop()


# --------------------------------------------------------------------------- helpers


def leftovers(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.parent.glob(f".{dst.name}.hyperclone-*"))


def assert_error(r, code: int, *needles: str, dst: Path | None = None) -> str:
    """Exactly one non-empty line on stderr, the exit code, the needles, no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    line = lines[0]
    print(line)  # shown with `pytest -rP`: the messages users see
    assert line.startswith("hyperclone: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    if dst is not None:
        assert not dst.exists(), f"{dst} was left behind"
        assert not leftovers(dst), leftovers(dst)
    return line


def st_read(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def st_write(file: Path, header: dict, data: bytes) -> None:
    """A safetensors file with this header (not checked) and these data bytes."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def edit_json(file: Path, **changes) -> None:
    d = json.loads(file.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    file.write_text(json.dumps(d))


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    single = tiny.save(tiny.llama_config(), root / "single")
    sharded = tiny.save(tiny.llama_config(), root / "sharded", max_shard_size="40KB")
    assert len(list(sharded.glob("*.safetensors"))) >= 2
    return {"single": single, "sharded": sharded}


@pytest.fixture
def src(models, tmp_path) -> Path:
    """A fresh copy of the tiny single-file checkpoint, free to break."""
    return Path(shutil.copytree(models["single"], tmp_path / "src"))


@pytest.fixture
def sharded(models, tmp_path) -> Path:
    return Path(shutil.copytree(models["sharded"], tmp_path / "src"))


@pytest.fixture
def dst(tmp_path) -> Path:
    return tmp_path / "out"


def expand_fails(src, dst, code, *needles, args=()):
    r = run("expand", src, dst, "--no-verify", *args, src=src)
    return assert_error(r, code, *needles, dst=dst)


# --------------------------------------------------------------------------- input files


def _not_json(f: Path) -> None:
    header, data = st_read(f)
    n = len(json.dumps(header).encode())
    f.write_bytes(n.to_bytes(8, "little") + b"\xff{not json" + b"x" * (n - 10) + data)


def _truncated_header(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:5])


def _truncated_data(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-100])


def _past_end(f: Path) -> None:
    header, data = st_read(f)
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + len(data), end + len(data)]
    st_write(f, header, data)


def _overlap(f: Path) -> None:
    header, data = st_read(f)
    k, v = "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"
    header[v]["data_offsets"] = header[k]["data_offsets"]
    st_write(f, header, data)


def _absurd_header(f: Path) -> None:
    raw = f.read_bytes()
    f.write_bytes((2**62).to_bytes(8, "little") + raw[8:])


def _absurd_shape(f: Path) -> None:
    header, data = st_read(f)
    header["model.norm.weight"]["shape"] = [2**40, 2**40]
    st_write(f, header, data)


def _unknown_dtype(f: Path) -> None:
    header, data = st_read(f)
    header["model.norm.weight"]["dtype"] = "F6_E3M2"  # refused by name, before its offsets
    st_write(f, header, data)


def _float8(f: Path) -> None:
    """A well-formed float8 tensor: the reader reads it (verify can), the plan refuses it."""
    sd = load_file(f)
    sd["model.norm.weight"] = sd["model.norm.weight"].to(torch.float8_e4m3fn)
    save_file(sd, f, metadata={"format": "pt"})


HEADER_CASES = {
    "not-json": (_not_json, "corrupt safetensors header (not JSON"),
    "truncated-header": (_truncated_header, "truncated safetensors file"),
    "truncated-data": (_truncated_data, "do not fit the file"),
    "offsets-past-end": (_past_end, "do not fit the file"),
    "overlap": (_overlap, "overlap in the file"),
    "absurd-header-size": (_absurd_header, "claims 4611686018427387904 bytes"),
    "absurd-shape": (_absurd_shape, "do not fit the file"),
    "unknown-dtype": (_unknown_dtype, "dtype F6_E3M2, which hyperclone cannot handle"),
    "float8": (_float8, "dtype F8_E4M3, which hyperclone cannot handle"),
}


@pytest.mark.parametrize("case", HEADER_CASES)
def test_broken_safetensors_is_refused_before_any_write(case, src, dst):
    corrupt, needle = HEADER_CASES[case]
    corrupt(src / "model.safetensors")
    expand_fails(src, dst, 1, "model.safetensors", needle)


def test_absurd_header_size_is_not_allocated(src, dst):
    """A header claiming 4 EiB is refused from its length prefix, without reading it: under
    a 3 GB address-space limit an attempt to allocate it would fail differently."""
    _absurd_header(src / "model.safetensors")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))"
    r = run("expand", src, dst, "--no-verify", src=src, patch=limit, real=True)
    assert_error(r, 1, "claims", "model.safetensors", dst=dst)


def test_integer_weight_is_refused_by_the_plan(src, dst):
    f = src / "model.safetensors"
    header, data = st_read(f)
    header["model.layers.0.mlp.up_proj.weight"]["dtype"] = "I32"  # same size: offsets hold
    st_write(f, header, data)
    expand_fails(src, dst, 1, "model.layers.0.mlp.up_proj.weight", "int32", "cannot widen")


# --------------------------------------------------------------------------- sharded index


def _index(src: Path) -> tuple[Path, dict]:
    p = src / "model.safetensors.index.json"
    return p, json.loads(p.read_text())


def _shard_names(src: Path) -> list[str]:
    return sorted(p.name for p in src.glob("*.safetensors"))


def test_index_naming_a_missing_shard(sharded, dst):
    victim = _shard_names(sharded)[-1]
    (sharded / victim).unlink()
    expand_fails(sharded, dst, 1, "model.safetensors.index.json", victim, "missing")


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_index_shard_outside_the_checkpoint(where, sharded, dst, tmp_path):
    outside = tmp_path / "evil.safetensors"
    shutil.copy(sharded / _shard_names(sharded)[0], outside)
    target = "../evil.safetensors" if where == "dotdot" else str(outside)
    p, index = _index(sharded)
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = target
    p.write_text(json.dumps(index))
    expand_fails(sharded, dst, 1, "model.safetensors.index.json", target, "outside the checkpoint")


def test_tensor_listed_twice_in_the_index(sharded, dst):
    p, index = _index(sharded)
    name, fname = next(iter(index["weight_map"].items()))
    text = json.dumps(index["weight_map"])
    p.write_text('{"weight_map": ' + text[:-1] + f', "{name}": "{fname}"' + "}}")
    expand_fails(sharded, dst, 1, "model.safetensors.index.json", name, "listed twice")


def test_tensor_stored_in_two_shards(sharded, dst):
    first, second = _shard_names(sharded)[:2]
    taken = next(k for k in st_read(sharded / first)[0] if k != "__metadata__")
    header, data = st_read(sharded / second)
    moved = next(k for k in header if k != "__metadata__")
    header[taken] = header.pop(moved)
    st_write(sharded / second, header, data)
    expand_fails(sharded, dst, 1, taken, first, second, "appears in both")


def test_shard_not_in_the_index(sharded, dst):
    shutil.copy(sharded / _shard_names(sharded)[0], sharded / "model-extra.safetensors")
    expand_fails(sharded, dst, 1, "model-extra.safetensors", "not listed in")


def test_index_pointing_at_the_wrong_shard(sharded, dst):
    first, second = _shard_names(sharded)[:2]
    p, index = _index(sharded)
    name = next(k for k, v in index["weight_map"].items() if v == first)
    index["weight_map"][name] = second
    p.write_text(json.dumps(index))
    expand_fails(sharded, dst, 1, "model.safetensors.index.json", name, "stored in")


# --------------------------------------------------------------------------- pytorch .bin


class _Payload:
    """Unpickling this runs `open(marker, "w")`: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bin_source(src: Path) -> Path:
    sd = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    torch.save(sd, src / "pytorch_model.bin")
    return src


@pytest.mark.parametrize("kind", ["torch-zip", "legacy-pickle"])
def test_bin_with_code_is_refused_and_never_run(kind, src, dst, tmp_path):
    marker = tmp_path / "PWNED"
    _bin_source(src)
    sd = {"model.embed_tokens.weight": torch.zeros(2, 2), "x": _Payload(marker)}
    if kind == "torch-zip":
        torch.save(sd, src / "pytorch_model.bin")
    else:
        (src / "pytorch_model.bin").write_bytes(pickle.dumps(sd))
    expand_fails(src, dst, 1, "pytorch_model.bin", "refusing to load")
    assert not marker.exists(), "the pickle payload ran"


def test_zip_that_is_not_a_torch_archive(src, dst):
    _bin_source(src)
    with zipfile.ZipFile(src / "pytorch_model.bin", "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    expand_fails(src, dst, 1, "pytorch_model.bin", "not a readable PyTorch checkpoint")


def test_clean_bin_still_expands(src, dst):
    _bin_source(src)
    r = run("expand", src, dst, "--no-verify", src=src)
    assert r.returncode == 0, r.stderr
    assert (dst / "model.safetensors").is_file() and not leftovers(dst)


# --------------------------------------------------------------------------- config.json


def test_config_missing(src, dst):
    (src / "config.json").unlink()
    expand_fails(src, dst, 1, str(src), "no config.json")


def test_config_not_json(src, dst):
    (src / "config.json").write_text("{'hidden_size': 32,")
    expand_fails(src, dst, 1, "config.json", "not valid JSON")


def test_config_unknown_model_type(src, dst):
    edit_json(src / "config.json", architectures=["FooForCausalLM"], model_type="foo")
    expand_fails(src, dst, 1, "config.json", "FooForCausalLM", "unsupported", "supported:")


def test_config_sizes_contradict_the_tensors(src, dst):
    edit_json(src / "config.json", hidden_size=64)
    expand_fails(src, dst, 1, "config.json", "does not match the weights")


def test_config_heads_do_not_divide_hidden(src, dst):
    edit_json(src / "config.json", num_attention_heads=5, num_key_value_heads=5, head_dim=None)
    expand_fails(src, dst, 1, "config.json", "not divisible by 5 attention heads")


def test_tensor_the_family_does_not_map(src, dst):
    sd = load_file(src / "model.safetensors")
    sd["model.layers.0.mystery.weight"] = torch.ones(4, 4)
    save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    expand_fails(src, dst, 1, "model.layers.0.mystery.weight", "not mapped by the llama family")


# --------------------------------------------------------------------------- verify's inputs
# `hyperclone verify` reads through the same checker as expand: the same broken inputs are
# refused with the same one line, whichever argument they are given as.


def _config_unknown_architecture(src: Path) -> None:
    edit_json(src / "config.json", architectures=["FooForCausalLM"], model_type="foo")


VERIFY_CASES = {
    **{
        case: (lambda src, corrupt=corrupt: corrupt(src / "model.safetensors"), needle)
        for case, (corrupt, needle) in HEADER_CASES.items()
        if case != "float8"  # a float8 checkpoint is valid input to verify
    },
    "config-missing": (lambda src: (src / "config.json").unlink(), "no config.json"),
    "config-not-json": (lambda src: (src / "config.json").write_text("{"), "not valid JSON"),
    "unknown-architecture": (_config_unknown_architecture, "does not recognize"),
}


@pytest.mark.parametrize("position", ["src", "dst"])
@pytest.mark.parametrize("case", VERIFY_CASES)
def test_verify_refuses_broken_input(case, position, src, models):
    corrupt, needle = VERIFY_CASES[case]
    corrupt(src)
    args = (src, models["single"]) if position == "src" else (models["single"], src)
    assert_error(run("verify", *args, src=src), 1, str(src), needle)


@pytest.mark.parametrize("position", ["src", "dst"])
def test_verify_refuses_a_bin_with_code_before_it_runs(position, src, models, tmp_path):
    marker = tmp_path / "PWNED"
    _bin_source(src)
    sd = {"model.embed_tokens.weight": torch.zeros(2, 2), "x": _Payload(marker)}
    torch.save(sd, src / "pytorch_model.bin")
    args = (src, models["single"]) if position == "src" else (models["single"], src)
    assert_error(run("verify", *args, src=src), 1, str(src / "pytorch_model.bin"), "refusing")
    assert not marker.exists(), "the pickle payload ran"


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "value, code",
    [("0", 2), ("1", 2), ("-2", 2), ("1000", 2), ("1.5", 2), ("two", 2)],
)
def test_bad_factor(value, code, src, dst):
    line = expand_fails(src, dst, code, "--factor", args=("--factor", value))
    assert "2 to 64" in line or "whole number" in line
    assert "Input should" not in line and "Value error" not in line


@pytest.mark.parametrize(
    "content, needles",
    [
        ("factr: 2\n", ("unknown key 'factr'", "known keys")),
        ("factor: two\n", ("factor", "whole number")),
        ("noise: loud\n", ("noise", "must be a number")),
        ("seed: 1.5\n", ("seed", "fractional part")),
        ("attention: sideways\n", ("attention", "head-dim")),
        ("- factor\n", ("expected a mapping",)),
        ("factor: [2\n", ("not valid YAML",)),
    ],
)
def test_bad_recipe(content, needles, src, dst, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(content)
    expand_fails(src, dst, 1, "r.yaml", *needles, args=("--recipe", recipe))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda(src, dst):
    expand_fails(src, dst, 1, "--device cuda", "not available", args=("--device", "cuda"))


# --------------------------------------------------------------------------- destination


def test_dst_exists_without_force(src, dst):
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    r = run("expand", src, dst, "--no-verify", src=src)
    assert_error(r, 1, str(dst), "already exists", "--force")
    assert (dst / "keep.txt").read_text() == "mine" and not leftovers(dst)


def test_force_replaces_a_checkpoint_once_complete(src, dst, models):
    shutil.copytree(models["single"], dst)
    (dst / "old.txt").write_text("old")
    r = run("expand", src, dst, "--no-verify", "--force", src=src)
    assert r.returncode == 0, r.stderr
    assert not (dst / "old.txt").exists() and not leftovers(dst)
    assert json.loads((dst / "config.json").read_text())["hidden_size"] == 64


SIGTERM_DURING_SWAP = """
import os, signal
_rename = os.rename
def rename(a, b):
    _rename(a, b)
    if str(b).endswith('.old'):  # the old DST is out, the new one not yet in
        os.kill(os.getpid(), signal.SIGTERM)
os.rename = rename
"""


def test_signal_during_the_force_swap_never_leaves_it_half_done(src, dst, models):
    shutil.copytree(models["single"], dst)
    r = run("expand", src, dst, "--no-verify", "--force", src=src, patch=SIGTERM_DURING_SWAP)
    assert_error(r, 143, "interrupted by SIGTERM after", "complete", "kept")
    assert json.loads((dst / "config.json").read_text())["hidden_size"] == 64
    assert (dst / "model.safetensors").is_file() and not leftovers(dst)


def test_force_refuses_to_replace_a_directory_that_is_not_a_checkpoint(src, dst):
    dst.mkdir()
    (dst / "thesis.tex").write_text("years of work")
    r = run("expand", src, dst, "--no-verify", "--force", src=src)
    assert_error(r, 1, str(dst), "--force replaces only a checkpoint")
    assert (dst / "thesis.tex").read_text() == "years of work" and not leftovers(dst)


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_dst_is_or_overlaps_the_source(where, src):
    dst = {"same": src, "inside": src / "wide", "parent": src.parent}[where]
    r = run("expand", src, dst, "--no-verify", "--force", src=src)
    assert_error(r, 1, str(dst), "source")
    assert not (src / "wide").exists() and not list(src.parent.glob(".*hyperclone-*"))


def test_dst_parent_missing(src, tmp_path):
    dst = tmp_path / "no" / "such" / "out"
    expand_fails(src, dst, 1, str(dst.parent), "does not exist")


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root bypasses them)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    probe = subprocess.run(
        ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "true"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def test_dst_parent_not_writable(src, tmp_path):
    prefix = _unprivileged()
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        r = run("expand", src, parent / "out", "--no-verify", src=src, prefix=prefix)
    finally:
        parent.chmod(0o755)
    assert_error(r, 4, str(parent), "not writable", dst=parent / "out")


@pytest.mark.parametrize("what", ["", "model.safetensors", "generation_config.json"])
def test_src_unreadable(what, src, dst):
    """The directory, a weight file, or a file that is only copied at the end (checked
    up front, so no work is wasted)."""
    prefix = _unprivileged()
    target = src / what if what else src
    before = tree_hashes(src)
    mode = target.stat().st_mode
    target.chmod(0)
    try:
        r = run("expand", src, dst, "--no-verify", prefix=prefix)
    finally:
        target.chmod(mode)
    assert_error(r, 4, str(target), dst=dst)
    assert tree_hashes(src) == before


# --------------------------------------------------------------------------- faults

SLOW_WRITES = """
import pathlib, time
from hyperclone_cli import writer
_write = writer.ShardWriter.write
def write(self, chunk, then=None):
    _write(self, chunk, then)
    pathlib.Path(os.environ['HC_TEST_MARK']).touch()  # first bytes are on disk
    time.sleep(0.25)
writer.ShardWriter.write = write
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_mid_write_leaves_nothing(signum, code, src, dst, tmp_path):
    mark = tmp_path / "writing"
    before = tree_hashes(src)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, "expand", str(src), str(dst), "--no-verify"],
        env={**ENV, "HC_TEST_PATCH": SLOW_WRITES, "HC_TEST_MARK": str(mark)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "writing never started"
            time.sleep(0.02)
        assert leftovers(dst), "the temporary directory should exist mid-write"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert_error(r, code, f"interrupted by {signal.Signals(signum).name}", dst=dst)
    assert tree_hashes(src) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (the expanded tiny model needs ~330 KB); skipped where mounting is
    not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_not_enough_space_is_refused_before_work(src, small_disk):
    dst = small_disk / "out"
    expand_fails(src, dst, 4, str(small_disk), "not enough disk space", "free")
    assert list(small_disk.iterdir()) == []


def test_huge_factor_is_refused_from_the_plan(src, dst, monkeypatch, cli):
    """The free-space check runs on the plan's byte count, before anything is written
    (in-process, with a disk that reports 100 MB free)."""
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**8, 0, 10**8))
    code, _, err = cli("expand", src, dst, "--no-verify", "--factor", "64")
    assert code == 4 and "not enough disk space" in err and len(err.strip().splitlines()) == 1
    assert not dst.exists() and not leftovers(dst)


FAKE_FREE_SPACE = """
import collections, shutil
shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')(1e12, 0, 1e12)
"""


def test_disk_fills_while_writing(src, small_disk):
    """Another writer filled the disk after the free-space check: the shard write hits a
    real ENOSPC on a real small file system."""
    dst = small_disk / "out"
    r = run("expand", src, dst, "--no-verify", src=src, patch=FAKE_FREE_SPACE)
    assert_error(r, 4, str(dst), "disk is full", "model.safetensors", dst=dst)
    assert list(small_disk.iterdir()) == []


def test_disk_full_from_the_writer(src, dst, monkeypatch, cli):
    """In-process: a writer whose every write fails with ENOSPC."""
    from hyperclone_cli import writer

    def full(self, chunk, then=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(writer.ShardWriter, "write", full)
    before = tree_hashes(src)
    code, _, err = cli("expand", src, dst, "--no-verify")
    lines = err.strip().splitlines()
    assert code == 4 and len(lines) == 1 and "Traceback" not in err, err
    assert str(dst) in lines[0] and "disk is full" in lines[0]
    assert not dst.exists() and not leftovers(dst) and tree_hashes(src) == before


CORRUPT_ON_CLOSE = """
from hyperclone_cli import writer
_close = writer.ShardWriter.close
def close(self):
    digest = _close(self)
    with open(self.path, 'r+b') as f:  # the disk loses the tail of the shard
        f.truncate(self.expected - 16)
    return digest
writer.ShardWriter.close = close
"""


def test_shard_corrupted_on_disk_is_caught_before_the_rename(src, dst):
    r = run("expand", src, dst, "--no-verify", src=src, patch=CORRUPT_ON_CLOSE)
    assert_error(r, 4, "model.safetensors", "shard just written", dst=dst)


def test_verification_failure_prints_figures_and_writes_nothing(src, dst):
    r = run("expand", src, dst, "--tolerance", "1e-30", src=src)
    line = assert_error(r, 3, "verification failed", "max |Δlogit|", "tolerance 1e-30", dst=dst)
    assert "top-1 agreement" in line and "rel error" in line


def test_force_keeps_the_old_dst_when_verification_fails(src, dst, models):
    shutil.copytree(models["single"], dst)
    before = tree_hashes(dst)
    r = run("expand", src, dst, "--force", "--tolerance", "1e-30", src=src)
    assert_error(r, 3, "verification failed")
    assert tree_hashes(dst) == before and not leftovers(dst)


def test_stale_temporary_directory_of_a_killed_run_is_removed(src, dst):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = dst.parent / f".{dst.name}.hyperclone-{dead.pid}.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    r = run("expand", src, dst, "--no-verify", src=src)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and not leftovers(dst)


# --------------------------------------------------------------------------- integrity


def test_same_inputs_and_seed_give_identical_bytes(sharded, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        r = run(
            "expand", sharded, out, "--no-verify", "--noise", "10", "--seed", "7",
            "--shard-size", "100KB", src=sharded,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    a, b = (tree_hashes(o) for o in outs)
    assert a == b
    assert len([f for f in a if f.endswith(".safetensors")]) >= 2


def test_model_card_records_each_shard_sha256(sharded, dst):
    r = run("expand", sharded, dst, "--no-verify", "--shard-size", "100KB", src=sharded)
    assert r.returncode == 0, r.stderr
    card = (dst / "README.md").read_text()
    shards = sorted(dst.glob("*.safetensors"))
    assert len(shards) >= 2
    for shard in shards:
        digest = hashlib.sha256(shard.read_bytes()).hexdigest()
        assert f"| {shard.name} | {shard.stat().st_size:,} | `{digest}` |" in card


def test_debug_shows_the_traceback(src, dst):
    (src / "config.json").write_text("nope")
    r = run("--debug", "expand", src, dst, "--no-verify", src=src, real=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "HypercloneError" in r.stderr
    assert not dst.exists() and not leftovers(dst)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_goes_back_to_the_system():
    """After lean_malloc, weights read and dropped one after another (as streamed verify
    does) do not stay resident: glibc's default kept them in its heaps."""
    code = """
import torch
from hyperclone_cli.memory import lean_malloc
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
assert lean_malloc()
base = rss()
keep = []
w = torch.ones(8 << 20); del w  # glibc's default: later blocks up to 32 MB come from its heaps
for n in range(40):
    w = torch.ones((1 + n % 7) << 18)  # 1..7 MB, each dropped after use
    keep.append(torch.ones(16))  # small objects allocated meanwhile pin the heap
    del w
print((rss() - base) / 2**20)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=ENV
    )
    assert float(out.stdout.strip()) < 16  # MB still resident (glibc's default here: ~50)


def test_shard_hash_runs_behind_the_writes_in_order(tmp_path, monkeypatch):
    """Chunks of 1 MB and more are hashed on the hash thread, in order, up to HASH_LAG
    behind the writes: the recorded sha256 is the file's, and each chunk's buffer is
    handed back once, only after it was written and hashed."""
    import threading as th
    from concurrent.futures import ThreadPoolExecutor

    from hyperclone_cli import writer

    gate = th.Event()
    slow = ThreadPoolExecutor(1)
    slow.submit(gate.wait)  # the hash thread is busy until the writes are queued
    monkeypatch.setattr(writer, "_hasher", lambda: slow)
    sizes = [3 << 20, 100, 2 << 20, 5, 1 << 20, 4 << 20]  # small ones between large ones
    entries = [writer.Entry(f"t{i}", torch.uint8, (n,)) for i, n in enumerate(sizes)]
    sw = writer.ShardWriter(tmp_path / "x.safetensors", entries, {"format": "pt"})
    handed: list[int] = []
    chunks = [torch.randint(0, 256, (n,), dtype=torch.uint8) for n in sizes]
    for i, c in enumerate(chunks[: writer.HASH_LAG]):
        sw.write(c, then=lambda i=i: handed.append(i))
    assert handed == [] and len(sw._hashing) == writer.HASH_LAG  # all waiting on the hash
    gate.set()
    for i, c in enumerate(chunks[writer.HASH_LAG :], writer.HASH_LAG):
        sw.write(c, then=lambda i=i: handed.append(i))
    digest = sw.close()
    assert sorted(handed) == list(range(len(sizes)))
    assert digest == hashlib.sha256((tmp_path / "x.safetensors").read_bytes()).hexdigest()
    from safetensors.torch import load_file

    got = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(got[f"t{i}"], c) for i, c in enumerate(chunks))


@pytest.mark.parametrize("keep_cached", [False, True])
def test_writeback_starts_every_writeback_bytes_keeping_the_pages_when_asked(
    keep_cached, tmp_path, monkeypatch
):
    """Every WRITEBACK_BYTES the shard's new pages go to the disk: with `keep_cached` (a
    verification reads them next) through sync_file_range, which keeps them in the page
    cache, otherwise through POSIX_FADV_DONTNEED; the ranges tile the file and the bytes
    are the same either way."""
    from hyperclone_cli import writer

    monkeypatch.setattr(writer, "WRITEBACK_BYTES", 1 << 20)
    monkeypatch.setattr(writer, "DIRECT_IO", False)  # (direct writes leave no dirty pages)
    calls: list[tuple[str, int, int]] = []

    def sync_file_range(fd, offset, nbytes, flags):
        assert flags == writer.SYNC_FILE_RANGE_WRITE
        calls.append(("sync_file_range", offset, nbytes))
        return 0

    def fadvise(fd, offset, nbytes, advice):
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append(("fadvise", offset, nbytes))

    monkeypatch.setattr(writer, "_sync_file_range", lambda: sync_file_range)
    monkeypatch.setattr(os, "posix_fadvise", fadvise, raising=False)
    chunks = [torch.full((700_000,), i, dtype=torch.uint8) for i in range(5)]
    entries = [writer.Entry(f"t{i}", torch.uint8, (c.numel(),)) for i, c in enumerate(chunks)]
    path = tmp_path / "x.safetensors"
    sw = writer.ShardWriter(path, entries, {"format": "pt"}, keep_cached=keep_cached)
    for c in chunks:
        sw.write(c)
    digest = sw.close()
    assert {name for name, _, _ in calls} == {"sync_file_range" if keep_cached else "fadvise"}
    offsets = [(o, n) for _, o, n in calls]
    assert offsets[0][0] == 0 and all(n >= 1 << 20 for _, n in offsets)
    assert all(a + n == b for (a, n), (b, _) in zip(offsets, offsets[1:], strict=False))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    from safetensors.torch import load_file

    got = load_file(path)
    assert all(torch.equal(got[f"t{i}"], c) for i, c in enumerate(chunks))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_is_called_for_real(tmp_path):
    from hyperclone_cli import writer

    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000)
    with open(path, "r+b") as f:
        writer.start_writeback(f.fileno(), 0, 10_000, keep_cached=True)
        with pytest.raises(OSError):
            writer.start_writeback(-1, 0, 10, keep_cached=True)
    assert writer._sync_file_range() is not None


@pytest.mark.parametrize("verify", [True, False])
def test_expand_keeps_the_written_pages_only_for_a_verification_that_fits(
    verify, src, tmp_path, monkeypatch
):
    from types import SimpleNamespace

    import psutil

    from hyperclone_cli import pipeline

    seen: list[bool] = []
    write_shards = pipeline.write_shards

    def spy(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("keep_cached", False))
        return write_shards(*args, **kwargs)

    monkeypatch.setattr(pipeline, "write_shards", spy)
    pipeline.expand(src, tmp_path / "a", factor=2, verify=verify)
    memory = SimpleNamespace(available=1)  # no room: the pages go as they are written
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory)
    pipeline.expand(src, tmp_path / "b", factor=2, verify=verify)
    assert seen == [verify, False]


def _shard_bytes(tmp_path, name, sizes, keep_cached=False):
    """Write a shard of uint8 tensors of these sizes; (file bytes, recorded sha256, chunks)."""
    from hyperclone_cli import writer

    chunks = [torch.randint(0, 256, (n,), dtype=torch.uint8) for n in sizes]
    entries = [writer.Entry(f"t{i}", torch.uint8, (n,)) for i, n in enumerate(sizes)]
    sw = writer.ShardWriter(tmp_path / name, entries, {"format": "pt"}, keep_cached=keep_cached)
    for c in chunks:
        sw.write(c)
    digest = sw.close()
    return (tmp_path / name).read_bytes(), digest, chunks


DIRECT_SIZES = [5, 3 * 4096, 4096 - 7, 20_000, 1, 9 * 4096 + 3]  # across stage boundaries


def test_direct_writes_give_the_bytes_of_buffered_ones(tmp_path, monkeypatch):
    """O_DIRECT through a small staging buffer (whole buffers, then a padded tail cut back):
    the same file, to the byte, as a normal buffered write."""
    from hyperclone_cli import writer

    monkeypatch.setattr(writer._DirectFile, "STAGE_BYTES", 2 * 4096)
    opened: list[object] = []
    direct_open = writer._DirectFile.open.__func__

    def spy(cls, path):
        opened.append(direct_open(cls, path))
        return opened[-1]

    monkeypatch.setattr(writer._DirectFile, "open", classmethod(spy))
    torch.manual_seed(0)
    direct, d_digest, _ = _shard_bytes(tmp_path, "direct.safetensors", DIRECT_SIZES)
    torch.manual_seed(0)
    cached, c_digest, chunks = _shard_bytes(tmp_path, "cached.safetensors", DIRECT_SIZES, True)
    assert len(opened) == 1  # kept-cached files never try O_DIRECT
    if sys.platform.startswith("linux"):
        assert opened[0] is not None, "this file system should take O_DIRECT"
    assert direct == cached and d_digest == c_digest == hashlib.sha256(direct).hexdigest()
    got = load_file(tmp_path / "direct.safetensors")
    assert all(torch.equal(got[f"t{i}"], c) for i, c in enumerate(chunks))


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")
@pytest.mark.parametrize("refused", ["open", "write"])
def test_a_file_system_that_refuses_direct_writes_gets_buffered_ones(
    refused, tmp_path, monkeypatch
):
    """EINVAL for O_DIRECT at open: a normal file; at the first write: O_DIRECT taken off
    the descriptor and the same bytes written buffered."""
    from hyperclone_cli import writer

    monkeypatch.setattr(writer._DirectFile, "STAGE_BYTES", 2 * 4096)
    refusals: list[str] = []
    real_open, real_write = os.open, os.write

    def fake_open(path, flags, *args):
        if refused == "open" and flags & os.O_DIRECT:
            refusals.append("open")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def fake_write(fd, data):
        import fcntl

        if refused == "write" and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refusals.append("write")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    torch.manual_seed(1)
    got, digest, _ = _shard_bytes(tmp_path, "x.safetensors", DIRECT_SIZES)
    monkeypatch.setattr(writer, "DIRECT_IO", False)
    torch.manual_seed(1)
    want, _, _ = _shard_bytes(tmp_path, "y.safetensors", DIRECT_SIZES)
    assert refusals == [refused]
    assert got == want and digest == hashlib.sha256(want).hexdigest()


def test_a_failed_direct_write_names_the_file(tmp_path, monkeypatch):
    from hyperclone_cli import writer

    monkeypatch.setattr(writer._DirectFile, "STAGE_BYTES", 4096)

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    entries = [writer.Entry("t", torch.uint8, (10_000,))]
    sw = writer.ShardWriter(tmp_path / "x.safetensors", entries, {"format": "pt"})
    with pytest.raises(OSError) as info:
        sw.write(torch.zeros(10_000, dtype=torch.uint8))
        sw.close()
    sw.abort()
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "x.safetensors")
