"""What a user sees (issue 15): hub ids as sources, one summary in the same words in the
table, the model card and inspect, memory predicted for the run as configured, messages
that say what to do, and the conveniences of a Typer tool. No test touches the network:
the hub's cache is faked on disk and the hub is offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import tiny

from hyperclone_cli.hub import files_to_fetch, resolve_source, source_label

REV = "0123456789abcdef0123456789abcdef01234567"
REV2 = "89abcdef0123456789abcdef0123456789abcdef"


def fake_cache(root: Path, repo: str, checkpoint: Path, rev: str, ref: str = "main") -> Path:
    """`checkpoint` placed in the hub's cache layout: blobs, a snapshot of links, a ref."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for f in checkpoint.iterdir():
        blob = folder / "blobs" / f"{rev[:8]}-{f.name}"
        shutil.copy2(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / ref).write_text(rev)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline hub whose cache holds org/tiny (sharded) at main, and a second revision."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    cfg = tiny.llama_config(num_key_value_heads=2, tie_word_embeddings=True)
    a = tiny.save(cfg, tmp_path / "a", max_shard_size="20KB")
    b = tiny.save(tiny.llama_config(hidden_size=48), tmp_path / "b")
    fake_cache(cache, "org/tiny", a, REV)
    fake_cache(cache, "org/tiny", b, REV2, ref="v2")
    monkeypatch.chdir(tmp_path)
    return cache


def test_hub_id_resolves_to_the_cached_snapshot(hub):
    snap = resolve_source("org/tiny")
    assert snap.name == REV and (snap / "config.json").is_file()
    assert resolve_source("org/tiny", revision="v2").name == REV2
    assert source_label(snap) == f"org/tiny@{REV}"


def test_expand_inspect_verify_take_a_hub_id(hub, tmp_path, cli):
    code, out, err = cli("inspect", "org/tiny", "--revision", "v2", "--json")
    assert code == 0, err
    assert json.loads(out)["hidden"] == 48
    code, out, err = cli("expand", "org/tiny", tmp_path / "wide", "--factor", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["source"] == f"org/tiny@{REV}"
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert cfg["hyperclone"]["source"] == f"org/tiny@{REV}"
    assert f"`org/tiny@{REV}`" in (tmp_path / "wide" / "README.md").read_text()
    code, out, err = cli("verify", "org/tiny", tmp_path / "wide", "--json")
    assert code == 0, err
    assert json.loads(out)["passed"]


def test_not_cached_and_offline_is_one_line_saying_how_to_get_it(hub, cli):
    code, out, err = cli("inspect", "org/absent")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "org/absent" in err and "not in the Hugging Face cache" in err
    assert "hf download org/absent" in err


def test_a_local_path_wins_over_a_hub_id(hub, tmp_path, cli):
    tiny.save(tiny.opt_config(), tmp_path / "org" / "tiny")
    code, out, err = cli("inspect", "org/tiny", "--json")
    assert code == 0, err
    assert json.loads(out)["family"] == "opt"
    code, out, err = cli("inspect", "org/tiny", "--revision", "v2")
    assert code == 1 and "--revision applies to hub ids only" in err


def test_only_config_tokenizer_and_one_weight_format_are_fetched():
    repo = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tokenizer.json",
        "tokenizer_config.json",
        "onnx/model.onnx",
        "onnx/model.safetensors",
        "README.md",
        "flax_model.msgpack",
    ]
    assert files_to_fetch(repo) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    sharded_bin = [
        "config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model.bin.index.json",
    ]
    assert files_to_fetch(sharded_bin) == sorted(sharded_bin)


class FakeHub:
    """The hub's two calls, faked: the repository's file list, and a download that writes
    only the files asked for. Nothing leaves the machine."""

    def __init__(self, checkpoint: Path, tmp: Path, unreachable: Exception | None = None):
        self.checkpoint, self.tmp, self.unreachable = checkpoint, tmp, unreachable
        self.asked: list[str] = []

    def list_repo_files(self, repo_id, revision=None):
        if self.unreachable:
            raise self.unreachable
        return [f.name for f in self.checkpoint.iterdir()] + ["onnx/model.onnx", "README.md"]

    def snapshot_download(self, repo_id, revision=None, local_files_only=False, **kw):
        from huggingface_hub.errors import LocalEntryNotFoundError

        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        self.asked = kw["allow_patterns"]
        out = self.tmp / "downloaded"
        out.mkdir()
        for name in self.asked:
            shutil.copy2(self.checkpoint / name, out / name)
        return str(out)


def online(monkeypatch, fake: FakeHub) -> None:
    import huggingface_hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: fake)


def test_not_cached_downloads_only_what_the_plan_needs(hub, tmp_path, monkeypatch, cli):
    ckpt = tiny.save(tiny.llama_config(), tmp_path / "remote")
    (ckpt / "tokenizer.json").write_text("{}")
    (ckpt / "pytorch_model.bin").write_bytes(b"not wanted")
    fake = FakeHub(ckpt, tmp_path)
    online(monkeypatch, fake)
    code, out, err = cli("inspect", "org/remote", "--json")
    assert code == 0, err
    assert fake.asked == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_unreachable_hub_is_one_line_saying_how_to_get_the_files(hub, tmp_path, monkeypatch, cli):
    import importlib.util

    # the hub's HTTP client: httpx, or its fork httpx2 in recent huggingface_hub releases
    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")

    fake = FakeHub(tmp_path, tmp_path, unreachable=httpx.ConnectError("no route to host"))
    online(monkeypatch, fake)
    code, out, err = cli("expand", "org/remote", tmp_path / "wide")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "the hub cannot be reached (ConnectError)" in err and "hf download org/remote" in err


# --- the summary, the model card, inspect: the same rows and words -----------------------


@pytest.fixture
def src(tmp_path):
    cfg = tiny.llama_config(num_key_value_heads=2, tie_word_embeddings=True)
    return tiny.save(cfg, tmp_path / "src")


def test_expand_table_says_what_was_done(src, tmp_path, cli):
    from hyperclone_cli.modelcard import cell

    args = ("--factor", "2", "--noise", "10", "--seed", "3", "--dtype", "bf16")
    code, out, err = cli("expand", src, tmp_path / "dst", *args)
    assert code == 0, err
    for words in (
        "more heads: 4 → 8",
        "replicate: 2 → 4",
        "symmetric",
        "bfloat16 (source float32)",
        "SNR 10 dB, seed 3",
        "tied (kept",
        "pass: rel error",
        "tolerance 0.03",
    ):
        assert words in " ".join(out.split()), words
    card = (tmp_path / "dst" / "README.md").read_text()
    summary = json.loads(cli("expand", src, tmp_path / "d2", *args, "--json")[1])
    # the card carries every setting row of the summary, word for word
    for label, value in summary["settings"].items():
        assert f"| {label} | {cell(value)} |" in card
    assert "| verification | pass: rel error" in card and "max \\|Δlogit\\|" in card
    assert "| dtype | bfloat16 (source float32) |" in card
    assert "## Verification" in card and "| passed | True |" in card


def test_inspect_shows_target_dtype_tie_words_and_the_whole_runs_memory(src, cli):
    code, out, err = cli("inspect", src, "--factor", "3", "--dtype", "bf16")
    assert code == 2  # inspect takes no --dtype: the recipe does
    recipe = src.parent / "r.yaml"
    recipe.write_text("factor: 3\ndtype: bfloat16\n")
    code, out, err = cli("inspect", src, "--recipe", recipe)
    assert code == 0, err
    text = " ".join(out.split())
    assert "float32 (" in text and "tensors)" in text  # the source's dtypes, explained
    assert "bfloat16 (source float32)" in text
    assert "tied " in text and "tied (kept" in text and "True" not in text
    assert "predicted peak RSS" in text and "verification" in text
    d = json.loads(cli("inspect", src, "--recipe", recipe, "--json")[1])["expansion"]
    assert d["verify_mode"] in ("full", "streamed")
    assert d["predicted_peak_rss_bytes"] == max(
        d["predicted_expand_rss_bytes"], d["predicted_verify_rss_bytes"]
    )
    recipe.write_text("factor: 3\nverify: false\n")
    d = json.loads(cli("inspect", src, "--recipe", recipe, "--json")[1])["expansion"]
    assert d["verify_mode"] == "off"
    assert d["predicted_peak_rss_bytes"] == d["predicted_expand_rss_bytes"]


def test_memory_prediction_follows_the_verification_mode(src):
    from hyperclone_cli.checkpoint import open_checkpoint
    from hyperclone_cli.inspection import BASELINE_RSS, predict_peak_rss
    from hyperclone_cli.plan import make_plan
    from hyperclone_cli.recipe import build_recipe

    plan = make_plan(open_checkpoint(src), build_recipe(None, factor=3))
    off, full, streamed = (predict_peak_rss(plan, m) for m in ("off", "full", "streamed"))
    assert off["verify"] == 0
    assert full["expand"] == off["expand"] == streamed["expand"]
    # full holds both models in float32; streamed one module's weights at a time
    src_params = sum(t.numel for t in plan.source.tensors.values())
    assert full["verify"] - BASELINE_RSS >= 4 * (src_params + plan.target_params)
    assert streamed["verify"] > BASELINE_RSS


def test_no_verify_card_says_so_and_the_demo_verifies_inside_expand(src, tmp_path, cli):
    from hyperclone_cli.demo import expand_command

    code, _, err = cli("expand", src, tmp_path / "dst", "--no-verify")
    assert code == 0, err
    card = (tmp_path / "dst" / "README.md").read_text()
    assert "| verification | not run (--no-verify) |" in card
    assert "| dtype | float32 |" in card
    assert "--no-verify" not in expand_command(src, tmp_path / "x", 2, None)


# --- messages and conveniences ------------------------------------------------------------


def test_usage_line_names_arguments_plainly(cli):
    for cmd, usage in (("expand", "SRC DST"), ("verify", "SRC DST"), ("inspect", "PATH")):
        code, out, _ = cli(cmd, "--help")
        assert code == 0
        assert f"hyperclone {cmd} [OPTIONS] {usage}" in out
        assert "{" not in out.splitlines()[0] if out.splitlines() else True


def test_truncated_shard_says_what_to_do(src, tmp_path, cli):
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, _, err = cli("inspect", src)
    assert code == 1
    assert "; the file is damaged or incomplete: download or copy it again" in err


def test_completion_and_families(cli):
    code, out, _ = cli("--help")
    assert "--install-completion" in out and "families" in out
    code, out, _ = cli("families", "--json")
    assert code == 0
    fams = {f["family"]: f for f in json.loads(out)}
    assert "LlamaForCausalLM" in fams["llama"]["architectures"]
    assert fams["opt"]["attention_head_dim"] and not fams["llama"]["attention_head_dim"]
    assert fams["olmo"]["tie"] == "untied" and not fams["gpt2"]["kv_heads_keep"]
    depth = {name: fams[name]["add_layers"] for name in ("llama", "opt", "minicpm3", "fuyu")}
    assert depth == {"llama": "yes", "opt": "some configs", "minicpm3": "no", "fuyu": "no"}
    code, out, _ = cli("families")
    assert code == 0 and "MistralForCausalLM" in out
