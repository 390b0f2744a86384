"""End to end through the CLI: build a tiny model, expand it, load the result with
transformers, compare logits and greedy tokens. Plus the core product behaviours."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import tiny
import torch
from safetensors import safe_open

from hyperclone_cli import expand, inspect, verify

VARIANTS = {
    "llama-mha-untied": tiny.llama_config(),
    "llama-gqa-tied": tiny.llama_config(num_key_value_heads=2, tie_word_embeddings=True),
    "llama-gqa-bias": tiny.llama_config(num_key_value_heads=2, attention_bias=True, mlp_bias=True),
    "llama-mqa-tied-bias": tiny.llama_config(
        num_key_value_heads=1, attention_bias=True, tie_word_embeddings=True
    ),
    "opt-pre-ln": tiny.opt_config(),
    "opt-post-ln": tiny.opt_config(do_layer_norm_before=False),
    "opt-project-in-out": tiny.opt_config(word_embed_proj_dim=16, do_layer_norm_before=False),
    "opt-project-pre-ln": tiny.opt_config(word_embed_proj_dim=16),
}


def greedy(model, ids: torch.Tensor, new: int = 6) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids[:1, :6], max_new_tokens=new, do_sample=False, min_new_tokens=new)
    return out[0].tolist()


def assert_same_function(src: Path, dst: Path, atol: float = 1e-4) -> None:
    a, b = tiny.load(src), tiny.load(dst)  # tiny.load asserts no missing/unexpected keys
    ids = tiny.tokens()
    la, lb = tiny.logits(a, ids), tiny.logits(b, ids)
    assert la.abs().max() > 1.0  # the logits are not trivially small
    torch.testing.assert_close(lb, la, atol=atol, rtol=1e-4)
    assert greedy(a, ids) == greedy(b, ids)


@pytest.mark.parametrize("name", VARIANTS)
def test_expand_through_cli_keeps_the_function(name, tmp_path, cli):
    src = tiny.save(VARIANTS[name], tmp_path / "src")
    code, out, err = cli("expand", src, tmp_path / "dst", "--factor", "2")
    assert code == 0, err
    assert_same_function(src, tmp_path / "dst")
    cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert cfg["hidden_size"] == 64
    assert cfg["hyperclone"]["factor"] == 2
    if name == "opt-post-ln":
        # nothing with parameters between the last layer and the head: untied, head written
        assert cfg["tie_word_embeddings"] is False
    elif VARIANTS[name].tie_word_embeddings:
        # the tie survives: no lm_head stored, and the config still ties
        assert cfg.get("tie_word_embeddings", True) is True
        with safe_open(str(tmp_path / "dst" / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" not in f.keys()  # noqa: SIM118 - safe_open has no __contains__


def test_heads_config_follows_strategy(tmp_path):
    src = tiny.save(tiny.llama_config(num_key_value_heads=2), tmp_path / "src")
    expand(src, tmp_path / "rep", factor=2, verify=False)
    expand(src, tmp_path / "keep", factor=2, kv_heads="keep", verify=False)
    rep = json.loads((tmp_path / "rep" / "config.json").read_text())
    keep = json.loads((tmp_path / "keep" / "config.json").read_text())
    assert (rep["num_attention_heads"], rep["num_key_value_heads"]) == (8, 4)
    assert (keep["num_attention_heads"], keep["num_key_value_heads"]) == (8, 2)
    assert_same_function(src, tmp_path / "keep")


def test_untie_on_request(tmp_path):
    src = tiny.save(tiny.llama_config(tie_word_embeddings=True), tmp_path / "src")
    res = expand(src, tmp_path / "dst", factor=2, tie="untie", verify=False)
    assert res.plan.tie == "untied"
    cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    with safe_open(str(tmp_path / "dst" / "model.safetensors"), "pt") as f:
        assert f.get_slice("lm_head.weight").get_shape() == [tiny.VOCAB, 64]
    assert_same_function(src, tmp_path / "dst")


def test_factor_three_and_ffn_factor(tmp_path):
    src = tiny.save(tiny.llama_config(num_key_value_heads=2), tmp_path / "src")
    expand(src, tmp_path / "x3", factor=3, verify=False)
    assert_same_function(src, tmp_path / "x3")
    expand(src, tmp_path / "ffn4", factor=2, ffn_factor=4, verify=False)
    cfg = json.loads((tmp_path / "ffn4" / "config.json").read_text())
    assert cfg["intermediate_size"] == 4 * 48
    assert_same_function(src, tmp_path / "ffn4")


def test_sharded_source_sharded_output_and_bin(tmp_path, cli):
    cfg = tiny.llama_config(num_key_value_heads=2, tie_word_embeddings=True)
    sharded = tiny.save(cfg, tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    code, _, err = cli("expand", sharded, tmp_path / "out", "--shard-size", "30KB")
    assert code == 0, err
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and all((tmp_path / "out" / f).exists() for f in files)
    assert_same_function(sharded, tmp_path / "out")

    # a pytorch_model.bin source (loaded with weights_only=True)
    model = tiny.load(sharded)
    binsrc = tmp_path / "bin"
    binsrc.mkdir()
    model.config.save_pretrained(binsrc)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, binsrc / "pytorch_model.bin")
    code, _, err = cli("expand", binsrc, tmp_path / "from-bin", "--no-verify")
    assert code == 0, err
    assert_same_function(sharded, tmp_path / "from-bin")


def test_noise_keeps_function_and_seed_is_reproducible(tmp_path, cli):
    src = tiny.save(tiny.llama_config(num_key_value_heads=2), tmp_path / "src")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, err = cli("expand", src, tmp_path / name, "--noise", "10", "--seed", seed)
        assert code == 0, err
    assert_same_function(src, tmp_path / "a", atol=1e-3)

    def digest(p: Path) -> str:
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    expand(src, tmp_path / "clean", factor=2, verify=False)
    with (
        safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as noisy,
        safe_open(str(tmp_path / "clean" / "model.safetensors"), "pt") as clean,
    ):
        name = "model.layers.0.mlp.down_proj.weight"
        assert not torch.equal(noisy.get_tensor(name), clean.get_tensor(name))
        name = "model.layers.0.input_layernorm.weight"  # nothing to add to norms
        assert torch.equal(noisy.get_tensor(name), clean.get_tensor(name))


def test_verify_catches_a_wrong_expansion(tmp_path, cli):
    from safetensors.torch import load_file, save_file

    src = tiny.save(tiny.llama_config(), tmp_path / "src")
    expand(src, tmp_path / "dst", factor=2, verify=False)
    code, out, err = cli("verify", src, tmp_path / "dst")
    assert code == 0, err
    assert "pass" in out
    f = tmp_path / "dst" / "model.safetensors"
    state = load_file(f)
    state["lm_head.weight"] = state["lm_head.weight"] * 2  # a lost 1/n
    save_file(state, f, metadata={"format": "pt"})
    code, out, err = cli("verify", src, tmp_path / "dst")
    assert code == 3
    assert err.count("\n") == 1 and "verification failed" in err


def test_outputs_carry_files_card_and_provenance(tmp_path, cli):
    src = tiny.save(tiny.llama_config(), tmp_path / "src")
    (src / "tokenizer.json").write_text('{"fake": true}')
    (src / "README.md").write_text("source card")
    code, out, err = cli("expand", src, tmp_path / "dst", "--noise", "12", "--seed", "5")
    assert code == 0, err
    dst = tmp_path / "dst"
    assert (dst / "tokenizer.json").read_text() == '{"fake": true}'
    assert (dst / "generation_config.json").exists()
    card = (dst / "README.md").read_text()
    assert "hyperclone" in card and "| noise | SNR 12 dB, seed 5 (generator v3) |" in card
    sha = hashlib.sha256((dst / "model.safetensors").read_bytes()).hexdigest()
    assert sha in card
    assert "max_abs_diff" in card
    assert not list(tmp_path.glob(".dst.hyperclone-*"))


def test_dry_run_writes_nothing(tmp_path, cli):
    src = tiny.save(tiny.llama_config(), tmp_path / "src")
    code, out, err = cli("expand", src, tmp_path / "dst", "--dry-run", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["dry_run"] and summary["target_params"] > summary["source_params"]
    assert not (tmp_path / "dst").exists()


def test_recipe_and_flag_override(tmp_path, cli):
    src = tiny.save(tiny.llama_config(num_key_value_heads=2), tmp_path / "src")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("factor: 3\nffn_factor: 2\nnoise: 20\nseed: 4\nkv_heads: keep\n")
    code, out, err = cli("expand", src, tmp_path / "dst", "--recipe", recipe, "--factor", "2")
    assert code == 0, err
    cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert cfg["hidden_size"] == 64  # the flag won
    assert cfg["intermediate_size"] == 96  # the recipe's ffn_factor
    assert cfg["num_key_value_heads"] == 2
    assert cfg["hyperclone"]["noise_snr_db"] == 20.0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("factor: 2\nfactr: 3\n", "unknown key 'factr'"),
        ("factor: two\n", "factor"),
        ("attention: sideways\n", "attention"),
        ("- a\n- b\n", "mapping"),
        ("factor: [2\n", "not valid YAML"),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path, cli, content, needle):
    src = tiny.save(tiny.llama_config(), tmp_path / "src")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    code, out, err = cli("expand", src, tmp_path / "dst", "--recipe", recipe)
    assert code == 1
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--factor", "1"], 2, "factor"),
        (["--factor", "1.5"], 2, "factor"),
        (["--attention", "nope"], 2, "attention"),
        (["--noise", "loud"], 2, "noise"),
        (["--shard-size", "lots"], 2, "shard"),
        (["--attention", "head-dim"], 1, "rotary"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, cli, args, code, needle):
    src = tiny.save(tiny.llama_config(), tmp_path / "src")
    got, out, err = cli("expand", src, tmp_path / "dst", *args)
    assert got == code, err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_inspect(tmp_path, cli):
    src = tiny.save(
        tiny.llama_config(num_key_value_heads=2, tie_word_embeddings=True), tmp_path / "s"
    )
    code, out, err = cli("inspect", src, "--factor", "2", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert (d["family"], d["hidden"], d["heads"], d["kv_heads"], d["tied"]) == (
        "llama",
        32,
        4,
        2,
        True,
    )
    e = d["expansion"]
    assert (e["hidden"], e["heads"], e["kv_heads"], e["head_dim"], e["tie"]) == (
        64,
        8,
        4,
        8,
        "kept",
    )
    assert e["params"] > 3 * d["params"]
    assert e["predicted_peak_rss_bytes"] > 0
    code, out, err = cli("inspect", src)
    assert code == 0 and "llama" in out


def test_python_api(tmp_path):
    src = tiny.save(tiny.opt_config(), tmp_path / "src")
    result = expand(src, tmp_path / "dst", factor=2)
    assert result.verification is not None and result.verification.passed
    assert verify(src, tmp_path / "dst").passed
    assert inspect(tmp_path / "dst").hidden == 64


def test_shipped_recipes_are_valid():
    from hyperclone_cli.recipe import load_recipe

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes
    for r in recipes:
        load_recipe(r)
