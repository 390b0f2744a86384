"""The checkpoint reader on small hand-made files: headers, checked offsets, sharded
indexes, dtypes (float8 read but not widened) and `.bin` files loaded `weights_only`."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hyperclone_cli.checkpoint import (
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    load_bin,
    open_checkpoint,
    read_safetensors_header,
)
from hyperclone_cli.errors import HypercloneError


def write_st(file: Path, header: dict, data: bytes) -> Path:
    """A safetensors file with exactly this header (unchecked) and these data bytes."""
    raw = json.dumps(header).encode()
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return file


def checkpoint_dir(path: Path, **files: dict[str, torch.Tensor]) -> Path:
    """A directory with a config.json and one safetensors file per keyword argument."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for name, tensors in files.items():
        save_file(tensors, path / f"{name}.safetensors", metadata={"format": "pt"})
    return path


def index(path: Path, weight_map: dict[str, str]) -> None:
    text = json.dumps({"metadata": {}, "weight_map": weight_map})
    (path / "model.safetensors.index.json").write_text(text)


# --------------------------------------------------------------------------- headers


def test_header_gives_absolute_offsets_and_skips_metadata(tmp_path):
    a = struct.pack("<6f", *range(6))  # F32 (2, 3) at [0, 24)
    b = torch.tensor([1.5, -2.0, 3.25, 0.0], dtype=torch.bfloat16).view(torch.uint8).numpy()
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
    }
    file = write_st(tmp_path / "x.safetensors", header, a + b.tobytes())
    data_start = 8 + len(json.dumps(header).encode())

    tensors = read_safetensors_header(file)
    assert list(tensors) == ["a", "b"]
    assert (tensors["a"].dtype, tensors["a"].shape) == (torch.float32, (2, 3))
    assert (tensors["a"].start, tensors["a"].nbytes) == (data_start, 24)
    assert (tensors["b"].dtype, tensors["b"].start, tensors["b"].nbytes) == (
        torch.bfloat16,
        data_start + 24,
        8,
    )


def test_read_returns_the_stored_values(tmp_path):
    want = {"w": torch.randn(3, 5), "h": torch.randn(7).to(torch.float16)}
    ckpt = open_checkpoint(checkpoint_dir(tmp_path / "c", model=want))
    assert ckpt.format == "safetensors"
    for name, tensor in want.items():
        got = ckpt.read(name)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor)
    assert ckpt.total_bytes == 15 * 4 + 7 * 2


def _offsets(begin: int, end: int) -> dict:
    return {"a": {"dtype": "F32", "shape": [2], "data_offsets": [begin, end]}}


BAD_HEADERS = {
    "not-json": (b"\xff{nope", "not JSON"),
    "not-an-object": (b"[1, 2]", "not an object"),
    "no-dtype": (
        {"a": {"shape": [2], "data_offsets": [0, 8]}},
        "corrupt header entry for tensor a",
    ),
    "negative-shape": (
        {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
        "corrupt header entry for tensor a",
    ),
    "float-offsets": (
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}},
        "corrupt header entry for tensor a",
    ),
    "past-end": (_offsets(8, 16), "do not fit the file"),
    "size-mismatch": (_offsets(0, 4), "do not fit the file"),
    "reversed": (_offsets(8, 0), "do not fit the file"),
    "overlap": (
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        "tensors a and b overlap",
    ),
    "unknown-dtype": (
        {"a": {"dtype": "F6_E3M2", "shape": [2], "data_offsets": [0, 8]}},
        "dtype F6_E3M2, which hyperclone cannot handle",
    ),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_bad_header_is_refused_naming_the_file(case, tmp_path):
    header, needle = BAD_HEADERS[case]
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    file = tmp_path / "x.safetensors"
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    with pytest.raises(HypercloneError, match=str(file)) as err:
        read_safetensors_header(file)
    assert needle in str(err.value)


@pytest.mark.parametrize("claim", [2**62, MAX_HEADER_BYTES + 1])
def test_header_size_is_checked_before_it_is_read(claim, tmp_path):
    """Larger than the file, or than safetensors' own limit though the file is larger
    still (a sparse file): refused from the length prefix alone."""
    file = tmp_path / "x.safetensors"
    with open(file, "wb") as f:
        f.write(claim.to_bytes(8, "little") + b"{}")
        f.truncate(MAX_HEADER_BYTES + 64)
    with pytest.raises(HypercloneError, match=f"claims {claim} bytes"):
        read_safetensors_header(file)


def test_a_file_too_short_for_the_length_prefix(tmp_path):
    file = tmp_path / "x.safetensors"
    file.write_bytes(b"\x02\x00\x00")
    with pytest.raises(HypercloneError, match="truncated safetensors file"):
        read_safetensors_header(file)


@pytest.mark.parametrize("mapped", [False, True])
def test_a_file_truncated_after_opening_is_an_error_not_a_crash(mapped, tmp_path):
    ckpt = open_checkpoint(checkpoint_dir(tmp_path / "c", model={"w": torch.ones(64)}))
    file = ckpt.tensors["w"].file
    file.write_bytes(file.read_bytes()[:-16])
    with pytest.raises(HypercloneError, match="tensor w is truncated"):
        ckpt.read("w", mapped=mapped)


def test_mapped_reads_give_the_stored_values_and_leave_the_file_alone(tmp_path):
    """A mapped read (streamed verification's) gives what a copied read gives, for tensors
    at any offset in the file (here none on a page boundary), rows included; writing into
    it changes neither the file nor a later read."""
    want = {
        "a": torch.randn(3),  # 12 bytes: every later tensor starts off a 4 KiB page
        "b": torch.randn(1500, 7).to(torch.bfloat16),
        "c": torch.randn(2100, 3),
        "d": torch.arange(5, dtype=torch.int64),
        "e": torch.zeros(0, 4),
    }
    ckpt = open_checkpoint(checkpoint_dir(tmp_path / "c", model=want))
    before = ckpt.tensors["c"].file.read_bytes()
    for name, tensor in want.items():
        got = ckpt.read(name, mapped=True)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got, tensor) and torch.equal(got, ckpt.read(name))
    rows = ckpt.read_rows("c", 1000, 1700, mapped=True)
    assert torch.equal(rows, want["c"][1000:1700])
    assert torch.equal(ckpt.read_rows("b", 1499, 1600, mapped=True), want["b"][1499:])
    rows.fill_(7.0)  # copy-on-write: private to this tensor
    assert ckpt.tensors["c"].file.read_bytes() == before
    assert torch.equal(ckpt.read("c", mapped=True), want["c"])


# --------------------------------------------------------------------------- dtypes


def test_float8_is_read_but_not_widenable(tmp_path):
    e4m3 = torch.tensor([0.5, -1.0, 2.0, 448.0]).to(torch.float8_e4m3fn)
    e5m2 = torch.tensor([0.25, -3.0]).to(torch.float8_e5m2)
    ckpt = open_checkpoint(checkpoint_dir(tmp_path / "c", model={"a": e4m3, "b": e5m2}))
    assert ckpt.tensors["a"].dtype == torch.float8_e4m3fn and ckpt.tensors["a"].nbytes == 4
    assert ckpt.tensors["b"].dtype == torch.float8_e5m2
    assert torch.equal(ckpt.read("a").view(torch.uint8), e4m3.view(torch.uint8))
    assert torch.equal(ckpt.read("b").float(), e5m2.float())
    # Known to the reader, refused by the plan (tests/test_reliability.py pins its message).
    assert not {t.dtype for t in ckpt.tensors.values()} & set(FLOAT_DTYPES)


def test_integer_tensors_are_read_as_stored(tmp_path):
    ids = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    ckpt = open_checkpoint(checkpoint_dir(tmp_path / "c", model={"ids": ids}))
    assert torch.equal(ckpt.read("ids"), ids)


# --------------------------------------------------------------------------- sharded


@pytest.fixture
def sharded(tmp_path) -> Path:
    path = checkpoint_dir(
        tmp_path / "c",
        **{
            "model-00001-of-00002": {"a": torch.ones(2), "b": torch.zeros(3)},
            "model-00002-of-00002": {"c": torch.full((4,), 7.0)},
        },
    )
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    index(path, {"a": first, "b": first, "c": second})
    (path / "tokenizer.json").write_text("{}")
    return path


def test_sharded_index_maps_each_tensor_to_its_shard(sharded):
    ckpt = open_checkpoint(sharded)
    assert {n: t.file.name for n, t in ckpt.tensors.items()} == {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors",
    }
    assert torch.equal(ckpt.read("c"), torch.full((4,), 7.0))
    # Weights, index and config are not carried over as they are; the tokenizer is.
    assert [p.name for p in ckpt.other_files] == ["tokenizer.json"]


def _edit_index(path: Path, edit) -> None:
    p = path / "model.safetensors.index.json"
    data = json.loads(p.read_text())
    edit(data["weight_map"])
    p.write_text(json.dumps(data))


SHARD_CASES = {
    "missing-shard": (
        lambda p: (p / "model-00002-of-00002.safetensors").unlink(),
        "shard model-00002-of-00002.safetensors is missing",
    ),
    "unlisted-shard": (
        lambda p: save_file({"d": torch.ones(1)}, p / "model-extra.safetensors"),
        "not listed in",
    ),
    "outside": (
        lambda p: _edit_index(p, lambda m: m.update(c="../model-00002-of-00002.safetensors")),
        "outside the checkpoint",
    ),
    "wrong-shard": (
        lambda p: _edit_index(p, lambda m: m.update(a="model-00002-of-00002.safetensors")),
        "tensor a is listed in model-00002-of-00002.safetensors but stored in",
    ),
    "unindexed-tensor": (lambda p: _edit_index(p, lambda m: m.pop("b")), "tensor b is not in"),
    "no-index": (
        lambda p: (p / "model.safetensors.index.json").unlink(),
        "2 weight files but no model.safetensors.index.json",
    ),
}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_sharded_index_is_checked(case, sharded):
    damage, needle = SHARD_CASES[case]
    damage(sharded)
    with pytest.raises(HypercloneError, match=needle):
        open_checkpoint(sharded)


def test_tensor_in_two_shards(tmp_path):
    path = checkpoint_dir(tmp_path / "c", a={"w": torch.ones(1)}, b={"w": torch.ones(1)})
    index(path, {"w": "a.safetensors", "v": "b.safetensors"})
    with pytest.raises(HypercloneError, match="appears in both a.safetensors and b.safetensors"):
        open_checkpoint(path)


# --------------------------------------------------------------------------- directories


def test_directory_problems_are_named(tmp_path):
    with pytest.raises(HypercloneError, match="no such directory"):
        open_checkpoint(tmp_path / "nowhere")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(HypercloneError, match="no config.json"):
        open_checkpoint(no_config)
    empty = checkpoint_dir(tmp_path / "empty")
    with pytest.raises(HypercloneError, match="no \\*.safetensors or pytorch_model\\*.bin"):
        open_checkpoint(empty)


# --------------------------------------------------------------------------- .bin


class _Payload:
    """Unpickling this runs `open(marker, "w")`: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bin_dir(path: Path, state: object, *, legacy: bool = False) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    if legacy:
        (path / "pytorch_model.bin").write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path / "pytorch_model.bin")
    return path


def test_bin_is_read_by_name(tmp_path):
    state = {"w": torch.randn(2, 3), "b": torch.arange(3, dtype=torch.int32)}
    ckpt = open_checkpoint(bin_dir(tmp_path / "c", state))
    assert ckpt.format == "bin"
    assert ckpt.tensors["w"].shape == (2, 3) and ckpt.tensors["b"].dtype == torch.int32
    assert torch.equal(ckpt.read("w"), state["w"]) and torch.equal(ckpt.read("b"), state["b"])


def test_bin_state_dict_wrapper_is_unwrapped(tmp_path):
    file = bin_dir(tmp_path / "c", {"state_dict": {"w": torch.ones(2)}}) / "pytorch_model.bin"
    assert list(load_bin(file)) == ["w"]


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "legacy-pickle"])
def test_bin_with_code_is_refused_before_it_runs(legacy, tmp_path):
    marker = tmp_path / "PWNED"
    path = bin_dir(tmp_path / "c", {"w": torch.ones(1), "x": _Payload(marker)}, legacy=legacy)
    with pytest.raises(HypercloneError, match="refusing to load.*could run code"):
        open_checkpoint(path)
    assert not marker.exists(), "the pickle payload ran"


@pytest.mark.parametrize(
    "state, needle",
    [({"w": torch.ones(1), "step": 3}, "not a state dict of tensors"), ([1, 2], "not a state")],
)
def test_bin_that_is_not_a_state_dict(state, needle, tmp_path):
    with pytest.raises(HypercloneError, match=needle):
        open_checkpoint(bin_dir(tmp_path / "c", state))


def test_bin_that_is_not_a_checkpoint(tmp_path):
    path = bin_dir(tmp_path / "c", {"w": torch.ones(8)})
    file = path / "pytorch_model.bin"
    file.write_bytes(file.read_bytes()[:100])  # a torch zip cut short
    with pytest.raises(HypercloneError, match="pytorch_model.bin: not a readable PyTorch"):
        open_checkpoint(path)
