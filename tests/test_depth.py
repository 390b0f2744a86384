"""Depth growth (--add-layers, LLaMA Pro): every family grows deeper, alone and with --factor,
at every placement, and computes the same function; new blocks' residual writers are zero;
per-layer config keys follow the layer map; post-LN models are refused; verify catches a
new block that is not silent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file
from test_families import IDS, MODELS, _greedy, assert_same_function
from transformers import Gemma3TextConfig, Qwen2Config

from hyperclone_cli.depth import (
    copy_sources,
    deepened_config,
    describe,
    layer_map,
    plan_layer_map,
)
from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.families.llama import LLAMA
from hyperclone_cli.inspection import inspect
from hyperclone_cli.pipeline import expand
from hyperclone_cli.recipe import build_recipe
from hyperclone_cli.verification import verify

POST_LN = {"opt-post-ln", "opt-project"}  # refused: the norm sits on the residual stream
PLACEMENTS = ("even", "top", "bottom")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    cache: dict = {}

    def get(name: str, make=None):
        if name not in cache:
            config = make() if make else MODELS[name][0]()
            path = tiny.save(config, tmp_path_factory.mktemp(name) / "src")
            model = tiny.load(path)
            cache[name] = (path, tiny.logits(model, IDS), _greedy(model))
        return cache[name]

    return get


def test_layer_map_placements():
    # LLaMA Pro: 32 layers + 8, a new block after every 4th
    m = layer_map(32, 8, "even")
    assert len(m) == 40 and [i for i, s in enumerate(m) if s is None] == list(range(4, 40, 5))
    assert copy_sources(m)[4] == 3 and copy_sources(m)[-1] == 31
    assert layer_map(4, 2, "top") == [0, 1, 2, 3, None, None]
    assert layer_map(4, 2, "bottom") == [None, None, 0, 1, 2, 3]
    assert copy_sources(layer_map(4, 2, "bottom"))[:3] == [0, 0, 0]
    assert layer_map(5, 2, "even") == [0, 1, 2, None, 3, 4, None]
    assert layer_map(2, 3, "even") == [0, None, 1, None, None]  # more new than old
    assert describe([0, None, 1]) == "0 0+ 1"


def test_config_keys_that_depend_on_the_layer_count():
    cfg = {
        "model_type": "llama",
        "num_hidden_layers": 4,
        "no_rope_layers": [1, 1, 0, 1],
        "first_k_dense_replace": 1,
        "mlp_only_layers": [0, 3],
        "max_window_layers": 28,  # above the layer count: no layer uses the window
    }
    lmap = [0, None, 1, 2, 3, None]  # 0 0+ 1 2 3 3+
    updates = deepened_config(cfg, LLAMA, lmap)
    assert updates == {
        "num_hidden_layers": 6,
        "no_rope_layers": [1, 1, 1, 0, 1, 1],
        "first_k_dense_replace": 2,
        "mlp_only_layers": [0, 1, 4, 5],
        "max_window_layers": 28,
    }
    with pytest.raises(HypercloneError, match="layer_types should have one entry per layer"):
        deepened_config(cfg | {"layer_types": ["full_attention"] * 3}, LLAMA, lmap)
    with pytest.raises(HypercloneError, match="decoder_sparse_step 2"):
        plan_layer_map(LLAMA, cfg | {"decoder_sparse_step": 2}, 4, 2, "even")


def _cases() -> list:
    cases = []
    for i, name in enumerate(n for n in MODELS if n not in POST_LN):
        cases.append(pytest.param(name, {"add_layers": 2}, id=f"{name}-depth"))
        for placement in PLACEMENTS:
            # with width: every placement on every family; the noise on one in three
            opts = {"factor": 2, "add_layers": 3, "layer_placement": placement}
            if (i + PLACEMENTS.index(placement)) % 3 == 0:
                opts["noise"] = 10.0
            cases.append(pytest.param(name, opts, id=f"{name}-x2-{placement}"))
    cases.append(pytest.param("llama-mqa-tied", {"add_layers": 1, "tie": "untie"}, id="untie"))
    cases.append(pytest.param("gpt2", {"factor": 3, "add_layers": 2, "noise": 3.0}, id="gpt2-x3"))
    # the other width options, combined with depth
    both = {"factor": 2, "add_layers": 2, "layout": "diagonal"}
    cases.append(pytest.param("gpt2", both | {"attention": "head-dim"}, id="gpt2-head-dim"))
    cases.append(pytest.param("opt", both | {"attention": "head-dim"}, id="opt-head-dim"))
    keep = {"kv_heads": "keep", "ffn_factor": 3, "noise": 10.0}
    cases.append(pytest.param("llama-gqa-bias", both | keep, id="llama-kv-keep-ffn3"))
    cases.append(pytest.param("phi3-tied-partial", both | keep, id="phi3-kv-keep-ffn3"))
    return cases


@pytest.mark.parametrize("name,opts", _cases())
def test_family_grows_deeper_exactly(sources, tmp_path, name, opts):
    src, src_logits, src_tokens = sources(name)
    result = expand(src, tmp_path / "big", verify=False, **opts)
    plan = result.plan
    k, n = opts["add_layers"], opts.get("factor", 1)
    cfg = json.loads((tmp_path / "big" / "config.json").read_text())
    layers = plan.dims.layers + k
    assert plan.config_layers == layers
    assert cfg[plan.family.config_keys["layers"][0]] == layers
    assert sum(s == "new" for s in cfg["hyperclone"]["layer_map"]) == k
    assert plan.sizes["hidden"] == n * plan.dims.hidden
    # every residual writer of a new block is +0.0, every other tensor is a copy
    state = load_file(tmp_path / "big" / "model.safetensors")
    zeros = [t for t in plan.tensors if t.zero]
    assert len(zeros) >= 2 * k
    for t in zeros:
        assert torch.equal(state[t.name], torch.zeros_like(state[t.name]))
        assert not state[t.name].signbit().any()
    assert_same_function(src_logits, src_tokens, tmp_path / "big")


def test_new_block_noise_breaks_symmetry_and_keeps_the_function(sources, tmp_path):
    src, src_logits, src_tokens = sources("llama-gqa-bias")
    expand(src, tmp_path / "a", verify=False, add_layers=2, noise=10.0, seed=1)
    expand(src, tmp_path / "b", verify=False, add_layers=2, noise=10.0, seed=1)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded
    # layer 1 is new, a copy of layer 0: its q/k/v/gate/up differ, norms and biases do not
    for proj in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
        new, old = a[f"model.layers.1.{proj}.weight"], a[f"model.layers.0.{proj}.weight"]
        assert not torch.equal(new, old)
        snr = old.pow(2).mean() / (new - old).pow(2).mean()
        assert 5 < snr < 20  # ~10 (10 dB)
    assert torch.equal(
        a["model.layers.1.self_attn.q_proj.bias"], a["model.layers.0.self_attn.q_proj.bias"]
    )
    assert torch.equal(
        a["model.layers.2.mlp.up_proj.weight"],
        load_file(src / "model.safetensors")["model.layers.1.mlp.up_proj.weight"],
    )
    assert_same_function(src_logits, src_tokens, tmp_path / "a")


def test_new_block_noise_does_not_depend_on_chunking():
    from types import SimpleNamespace

    from hyperclone_cli.depth import with_block_noise

    w = torch.randn(150, 7, generator=torch.Generator().manual_seed(0))
    t = SimpleNamespace(
        name="model.layers.3.mlp.up_proj.weight", shape=(150, 7), axes=(), scale=1.0
    )

    def noisy(step: int) -> torch.Tensor:
        chunks = [w[i : i + step].clone() for i in range(0, 150, step)]
        return torch.cat(list(with_block_noise(chunks, w, t, 10.0, seed=4)))

    a = noisy(150)
    assert torch.equal(a, noisy(7)) and torch.equal(a, noisy(64))
    snr = w.pow(2).mean() / (a - w).pow(2).mean()
    assert 8 < snr < 12.5


def _gemma3_sliding() -> Gemma3TextConfig:
    # 4 layers, a window of 3 tokens on all but every 2nd: the layer types change the logits
    return Gemma3TextConfig(
        vocab_size=tiny.VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        max_position_embeddings=64,
        sliding_window=3,
        sliding_window_pattern=2,
    )


def _qwen2_sliding() -> Qwen2Config:
    return Qwen2Config(
        vocab_size=tiny.VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=2,
    )


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_per_layer_config_lists_follow_the_map(sources, tmp_path, placement):
    src, src_logits, src_tokens = sources("gemma3-sliding", _gemma3_sliding)
    src_cfg = json.loads((src / "config.json").read_text())
    types = src_cfg["layer_types"]
    assert types == ["sliding_attention", "full_attention"] * 2
    result = expand(src, tmp_path / "big", factor=2, add_layers=3, layer_placement=placement)
    assert result.verification.passed
    cfg = json.loads((tmp_path / "big" / "config.json").read_text())
    sources_of = copy_sources(result.plan.layer_map)
    assert cfg["layer_types"] == [types[c] for c in sources_of]
    assert_same_function(src_logits, src_tokens, tmp_path / "big")


def test_layer_types_written_when_the_config_leaves_them_implied(sources, tmp_path):
    src, src_logits, src_tokens = sources("gemma3-sliding", _gemma3_sliding)
    implied = tmp_path / "implied"
    implied.mkdir()
    for f in src.iterdir():
        (implied / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    del cfg["layer_types"]  # older files: the pattern only (transformers derives the list)
    (implied / "config.json").write_text(json.dumps(cfg))
    expand(implied, tmp_path / "big", add_layers=2, verify=False)
    out = json.loads((tmp_path / "big" / "config.json").read_text())
    s, f = "sliding_attention", "full_attention"
    assert out["layer_types"] == [s, f, f, s, f, f]  # map 0 1 1+ 2 3 3+
    assert_same_function(src_logits, src_tokens, tmp_path / "big")


def test_max_window_layers_follows_the_map(sources, tmp_path):
    src, src_logits, src_tokens = sources("qwen2-sliding", _qwen2_sliding)
    result = expand(src, tmp_path / "big", add_layers=2, layer_placement="bottom", verify=False)
    cfg = json.loads((tmp_path / "big" / "config.json").read_text())
    assert result.plan.layer_map == [None, None, 0, 1, 2, 3]
    assert cfg["max_window_layers"] == 4  # layers 0-1 (copies of 0) and 2-3 (were 0-1)
    assert cfg["layer_types"] == ["full_attention"] * 4 + ["sliding_attention"] * 2
    assert_same_function(src_logits, src_tokens, tmp_path / "big")


@pytest.mark.parametrize("name", sorted(POST_LN))
def test_post_layernorm_is_refused_with_the_reason(sources, tmp_path, cli, name):
    src, _, _ = sources(name)
    code, _, err = cli("expand", str(src), str(tmp_path / "big"), "--add-layers", "2")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "post-LayerNorm" in lines[0] and "residual stream" in lines[0]
    assert not (tmp_path / "big").exists()


def _new_block_not_silent(src: Path, tmp_path: Path) -> Path:
    expand(src, tmp_path / "bad", add_layers=1, layer_placement="top", verify=False)
    file = tmp_path / "bad" / "model.safetensors"
    state = load_file(file)
    name = "model.layers.2.self_attn.o_proj.weight"  # the new block on top
    assert torch.equal(state[name], torch.zeros_like(state[name]))
    state[name] = state["model.layers.1.self_attn.o_proj.weight"].clone()
    save_file(state, file, metadata={"format": "pt"})
    return tmp_path / "bad"


@pytest.mark.parametrize("streamed", [False, True])
def test_verify_catches_a_new_block_that_is_not_zero(sources, tmp_path, streamed):
    src, _, _ = sources("llama-mha")
    bad = _new_block_not_silent(src, tmp_path)
    report = verify(src, bad, streamed=streamed)
    assert not report.passed
    if streamed:
        assert [c.passed for c in report.layers] == [True, True, False]
        assert report.first_bad_layer == 2


def test_streamed_verify_checks_new_layers_as_identity(sources, tmp_path):
    src, _, _ = sources("llama-gqa-bias")
    expand(src, tmp_path / "big", factor=2, add_layers=3, layer_placement="bottom", verify=False)
    report = verify(src, tmp_path / "big", streamed=True)
    assert report.passed and len(report.layers) == 5 and all(c.passed for c in report.layers)
    full = verify(src, tmp_path / "big", streamed=False)
    assert full.passed


def test_factor_one_needs_a_growth_option(tmp_path):
    assert build_recipe(add_layers=2).factor == 1  # depth alone
    assert build_recipe(add_layers=2, factor=3).factor == 3
    with pytest.raises(HypercloneError, match="--factor.*1 only with --add-layers"):
        build_recipe(factor=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("factor: 1\n")
    assert build_recipe(recipe, add_layers=4).factor == 1
    with pytest.raises(HypercloneError, match=f"recipe {recipe}: factor"):
        build_recipe(recipe)
    with pytest.raises(HypercloneError, match="--add-layers: must be an integer from 1"):
        build_recipe(add_layers=0)


def test_cli_dry_run_and_inspect_show_the_layer_map(sources, tmp_path, cli):
    src, _, _ = sources("gpt2")
    code, out, err = cli(
        "expand", src, tmp_path / "big", "--add-layers", "2", "--dry-run", "--json"
    )
    assert code == 0, err
    s = json.loads(out)
    assert s["layers"] == {"source": 2, "target": 4, "map": "0 0+ 1 1+"} and s["factor"] == 1
    code, out, err = cli(
        "inspect", src, "--add-layers", "1", "--layer-placement", "bottom", "--json"
    )
    assert code == 0, err
    exp = json.loads(out)["expansion"]
    assert exp["layers"] == 3 and exp["layer_map"] == "0+ 0 1"
    assert inspect(src, factor=2, add_layers=1).expansion["layer_map"] == "0 1 1+"
    code, out, _ = cli("expand", src, tmp_path / "big", "--factor", "2", "--add-layers", "2")
    assert code == 0
    card = (tmp_path / "big" / "README.md").read_text()
    assert "LLaMA Pro" in card and "| 3 | new (copy of 1) |" in card


def test_layers_that_differ_are_refused(sources, tmp_path):
    """A copy must fit its new place: here layer 0 lacks a norm the others have (as in
    ModernBERT's decoder)."""
    src, _, _ = sources("llama-mha")
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in src.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    state = load_file(odd / "model.safetensors")
    del state["model.layers.0.input_layernorm.weight"]
    save_file(state, odd / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HypercloneError, match="layers differ.*input_layernorm"):
        expand(odd, tmp_path / "big", add_layers=1, dry_run=True)
