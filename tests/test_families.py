"""Every family × attention option × factor: widen a tiny model built from a transformers
config, load it with AutoModelForCausalLM (no missing or unexpected keys) and compare its
logits and greedy tokens with the source's. Plus the file layouts found in the wild, the
one-line refusals, and what `inspect` reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    Olmo2Config,
    OlmoConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.families import FAMILIES
from hyperclone_cli.inspection import inspect
from hyperclone_cli.pipeline import expand

# Shared sizes: hidden 32, 4 heads of 8, 2 layers, vocab 96.
COMMON = dict(vocab_size=tiny.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
ROPE = dict(intermediate_size=48, max_position_embeddings=64)


def _gpt2(**kw) -> GPT2Config:
    base = dict(vocab_size=tiny.VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    base |= dict(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2Config(**(base | kw))


def _neox(**kw) -> GPTNeoXConfig:
    base = COMMON | ROPE | dict(rotary_pct=0.25, use_parallel_residual=True)
    return GPTNeoXConfig(**(base | kw))


def _phi3(**kw) -> Phi3Config:
    base = COMMON | ROPE | dict(num_key_value_heads=2, pad_token_id=0, eos_token_id=0)
    return Phi3Config(**(base | dict(original_max_position_embeddings=64) | kw))


# name → (config factory, family, rotary, grouped-query attention, tied)
MODELS = {
    "llama-mha": (lambda: tiny.llama_config(), "llama", True, False, False),
    "llama-gqa-bias": (
        lambda: tiny.llama_config(num_key_value_heads=2, attention_bias=True, mlp_bias=True),
        "llama",
        True,
        True,
        False,
    ),
    "llama-mqa-tied": (
        lambda: tiny.llama_config(num_key_value_heads=1, tie_word_embeddings=True),
        "llama",
        True,
        True,
        True,
    ),
    "qwen2-tied": (
        lambda: Qwen2Config(**COMMON, **ROPE, num_key_value_heads=2, tie_word_embeddings=True),
        "qwen2",
        True,
        True,
        True,
    ),
    "olmo-tied": (
        lambda: OlmoConfig(**COMMON, **ROPE, tie_word_embeddings=True, clip_qkv=4.0),
        "olmo",
        True,
        False,
        True,
    ),
    "olmo2": (
        lambda: Olmo2Config(**COMMON, **ROPE, num_key_value_heads=2),
        "olmo2",
        True,
        True,
        False,
    ),
    "gemma-mqa-tied": (
        lambda: GemmaConfig(**COMMON, **ROPE, num_key_value_heads=1, head_dim=8),
        "gemma",
        True,
        True,
        True,
    ),
    "gemma2": (
        lambda: Gemma2Config(**COMMON, **ROPE, num_key_value_heads=2, head_dim=8),
        "gemma",
        True,
        True,
        True,
    ),
    "gemma3": (
        lambda: Gemma3TextConfig(**COMMON, **ROPE, num_key_value_heads=2, head_dim=8),
        "gemma3",
        True,
        True,
        True,
    ),
    "qwen3": (
        lambda: Qwen3Config(**COMMON, **ROPE, num_key_value_heads=2, head_dim=8),
        "qwen3",
        True,
        True,
        False,
    ),
    "phi3-gqa": (lambda: _phi3(), "phi3", True, True, False),
    "phi3-tied-partial": (
        lambda: _phi3(tie_word_embeddings=True, partial_rotary_factor=0.5),
        "phi3",
        True,
        True,
        True,
    ),
    "opt": (lambda: tiny.opt_config(), "opt", False, False, True),
    "opt-post-ln": (lambda: tiny.opt_config(do_layer_norm_before=False), "opt", False, False, True),
    "opt-project": (
        lambda: tiny.opt_config(word_embed_proj_dim=16, do_layer_norm_before=False),
        "opt",
        False,
        False,
        True,
    ),
    "gpt2": (lambda: _gpt2(), "gpt2", False, False, True),
    "gpt2-untied-ffn": (
        lambda: _gpt2(tie_word_embeddings=False, n_inner=40),
        "gpt2",
        False,
        False,
        False,
    ),
    "pythia": (lambda: _neox(), "gpt_neox", True, False, False),
    "neox-sequential": (
        lambda: _neox(use_parallel_residual=False, rotary_pct=1.0, attention_bias=False),
        "gpt_neox",
        True,
        False,
        False,
    ),
}


FAMILIES_BY_NAME = {f.name: f for f in FAMILIES}

# variants of a layout tested above: factors and KV handling only
LIGHT = {"llama-mha", "gemma2", "gemma3", "qwen3", "opt-post-ln", "neox-sequential"}


def _cases() -> list:
    cases = []
    for name, (_, fam, rotary, _, tied) in MODELS.items():
        keep = FAMILIES_BY_NAME[fam].supports_kv_keep  # GQA, MQA, or MHA made GQA
        opts: list[dict] = [{"factor": 2}, {"factor": 3}]
        if name in LIGHT:
            opts += [{"factor": 2, "kv_heads": "keep"}] if keep else []
            cases += [pytest.param(name, o, id=f"{name}-" + _id(o)) for o in opts]
            continue
        opts.append({"factor": 2, "layout": "diagonal"})
        opts.append({"factor": 2, "noise": 10.0})
        opts.append({"factor": 2, "ffn_factor": 4})
        if keep:
            opts += [{"factor": 2, "kv_heads": "keep"}, {"factor": 3, "kv_heads": "keep"}]
        if not rotary:
            opts += [{"factor": 2, "attention": "head-dim"}, {"factor": 3, "attention": "head-dim"}]
        if tied:
            opts.append({"factor": 2, "tie": "untie"})
        cases += [pytest.param(name, o, id=f"{name}-" + _id(o)) for o in opts]
    # factor 4 and the options combined, on one model of each attention kind
    for name in ("llama-gqa-bias", "gemma-mqa-tied", "phi3-gqa", "pythia", "gpt2", "opt-project"):
        cases.append(pytest.param(name, {"factor": 4}, id=f"{name}-x4"))
    combined = {"factor": 3, "ffn_factor": 4, "layout": "diagonal", "noise": 10.0}
    for name, extra in [
        ("llama-gqa-bias", {"kv_heads": "keep"}),
        ("gemma-mqa-tied", {"kv_heads": "keep"}),
        ("phi3-tied-partial", {"kv_heads": "keep"}),
        ("olmo2", {"kv_heads": "keep"}),
        ("gpt2", {"attention": "head-dim"}),
        ("opt-project", {"attention": "head-dim"}),
        ("pythia", {}),
    ]:
        o = combined | extra
        cases.append(pytest.param(name, o, id=f"{name}-" + _id(o)))
    return cases


def _id(opts: dict) -> str:
    short = {"factor": "x", "ffn_factor": "ffn", "noise": "snr"}
    return "-".join(f"{short[k]}{v:g}" if k in short else str(v) for k, v in opts.items())


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """Each tiny source model saved once, with its logits and greedy continuation."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            path = tiny.save(MODELS[name][0](), tmp_path_factory.mktemp(name) / "src")
            model = tiny.load(path)
            cache[name] = (path, tiny.logits(model, IDS), _greedy(model))
        return cache[name]

    return get


IDS = tiny.tokens(batch=2, length=12)


def _greedy(model: torch.nn.Module) -> torch.Tensor:
    """The source's greedy continuation of a 6-token prompt, 6 tokens long."""
    with torch.no_grad():
        return model.generate(IDS[:1, :6], max_new_tokens=6, do_sample=False, pad_token_id=0)


def _greedy_agrees(model: torch.nn.Module, sequence: torch.Tensor) -> bool:
    """Greedy decoding would give `sequence`: the argmax after each prefix is its next token
    (one forward pass instead of a generate loop)."""
    steps = tiny.logits(model, sequence)[0, 5:-1].argmax(-1)
    return torch.equal(steps, sequence[0, 6:])


def assert_same_function(src_logits, src_tokens, dst: Path) -> float:
    wide = tiny.load(dst)  # asserts no missing / unexpected keys
    out = tiny.logits(wide, IDS)
    diff = (out - src_logits).abs().max().item()
    scale = src_logits.abs().max().item()
    assert diff <= 2e-5 * max(1.0, scale), f"max |Δlogit| {diff:.3g} (logits up to {scale:.3g})"
    assert torch.equal(out.argmax(-1), src_logits.argmax(-1))
    if src_tokens is not None:  # None: generate() needs inputs a forward does not (CPM-Ant)
        assert _greedy_agrees(wide, src_tokens)
    return diff


def assert_deepens_or_refuses(src, src_logits, src_tokens, dst: Path, refused: str | None):
    """`--factor 2 --add-layers 2`: the same function with two new blocks, or a refusal
    whose message matches `refused` (the feature that keeps a zeroed block from being the
    identity)."""
    if refused:
        with pytest.raises(HypercloneError, match=refused):
            expand(src, dst, verify=False, factor=2, add_layers=2)
        return
    plan = expand(src, dst, verify=False, factor=2, add_layers=2).plan
    assert plan.config["hyperclone"]["layer_map"].count("new") == 2
    assert_same_function(src_logits, src_tokens, dst)


@pytest.mark.parametrize("name,opts", _cases())
def test_family_expands_exactly(sources, tmp_path, name, opts):
    src, src_logits, src_tokens = sources(name)
    result = expand(src, tmp_path / "wide", verify=False, **opts)
    plan = result.plan
    assert plan.family.name == MODELS[name][1]
    n = opts["factor"]
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert plan.sizes["hidden"] == n * plan.dims.hidden
    if opts.get("attention") == "head-dim":
        assert plan.sizes["heads"] == plan.dims.heads
        assert plan.sizes["head_dim"] == n * plan.dims.head_dim
    elif opts.get("kv_heads") == "keep":
        assert plan.sizes["kv_heads"] == plan.dims.kv_heads
        assert cfg["num_key_value_heads"] == plan.dims.kv_heads
    else:
        assert plan.sizes["heads"] == n * plan.dims.heads
    assert plan.sizes["ffn"] == opts.get("ffn_factor", n) * plan.dims.ffn
    assert_same_function(src_logits, src_tokens, tmp_path / "wide")


def test_noise_changes_the_weights_but_not_the_function(sources, tmp_path):
    src, src_logits, src_tokens = sources("gpt2")
    expand(src, tmp_path / "a", verify=False, factor=2, attention="head-dim")
    expand(src, tmp_path / "b", verify=False, factor=2, attention="head-dim", noise=10.0)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    # c_attn is Conv1D (in, out): its input side is axis 0, where the noise goes
    w = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(a[w], b[w])
    assert torch.equal(a["transformer.wte.weight"], b["transformer.wte.weight"])
    assert_same_function(src_logits, src_tokens, tmp_path / "b")


def test_olmo_tie_is_removed_and_head_written(sources, tmp_path):
    src, _, _ = sources("olmo-tied")
    result = expand(src, tmp_path / "wide", verify=False, factor=2)
    assert result.plan.tie == "untied"
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert "lm_head.weight" in load_file(tmp_path / "wide" / "model.safetensors")


@pytest.mark.parametrize("name", ["gemma-mqa-tied", "qwen2-tied", "gpt2", "phi3-tied-partial"])
def test_tie_kept_by_scaling_the_final_norm(sources, tmp_path, name):
    src, _, _ = sources(name)
    assert expand(src, tmp_path / "wide", verify=False, factor=2).plan.tie == "kept"
    assert "lm_head.weight" not in load_file(tmp_path / "wide" / "model.safetensors")


def _rewrite(src: Path, dst: Path, rename, extra: dict | None = None) -> Path:
    """A copy of a checkpoint with tensor names rewritten (and buffers added) on disk."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = {rename(k): v for k, v in load_file(src / "model.safetensors").items()}
    save_file(tensors | (extra or {}), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("tie", ["keep", "untie"])
def test_gpt2_hub_layout_without_prefix(sources, tmp_path, tie):
    """The hub's gpt2 files: no `transformer.` prefix, causal-mask buffers stored."""
    src, src_logits, src_tokens = sources("gpt2")
    mask = torch.tril(torch.ones(64, 64, dtype=torch.uint8)).view(1, 1, 64, 64)
    buffers = {f"h.{i}.attn.bias": mask.clone() for i in range(2)}
    buffers |= {f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(2)}
    hub = _rewrite(src, tmp_path / "hub", lambda k: k.removeprefix("transformer."), buffers)
    result = expand(hub, tmp_path / "wide", verify=False, factor=2, tie=tie)
    assert sorted(d for d, _ in result.plan.dropped if "attn" in d) == sorted(buffers)
    names = load_file(tmp_path / "wide" / "model.safetensors")
    assert "h.0.attn.c_attn.weight" in names and "wte.weight" in names
    assert ("lm_head.weight" in names) == (tie == "untie")
    assert_same_function(src_logits, src_tokens, tmp_path / "wide")


@pytest.mark.parametrize("head", ["embed_out", "lm_head"])
def test_pythia_head_names(sources, tmp_path, head):
    """Pythia files call the head embed_out (transformers also writes that name on save);
    in memory it is lm_head, and files with that name are read too."""
    src, src_logits, src_tokens = sources("pythia")
    assert "embed_out.weight" in load_file(src / "model.safetensors")
    buffers = {}
    for i in range(2):
        a = f"gpt_neox.layers.{i}.attention."
        buffers[a + "rotary_emb.inv_freq"] = torch.tensor([1.0])
        buffers[a + "masked_bias"] = torch.tensor(-1e9)
    named = _rewrite(
        src, tmp_path / "src", lambda k: re.sub(r"^embed_out\.", f"{head}.", k), buffers
    )
    expand(named, tmp_path / "wide", verify=False, factor=2)
    assert f"{head}.weight" in load_file(tmp_path / "wide" / "model.safetensors")
    assert_same_function(src_logits, src_tokens, tmp_path / "wide")


def test_pythia_untied_head_written_as_embed_out(tmp_path):
    src = tiny.save(_neox(tie_word_embeddings=True), tmp_path / "src")
    model = tiny.load(src)
    result = expand(src, tmp_path / "wide", verify=False, factor=2, tie="untie")
    assert result.plan.tie == "untied"
    assert "embed_out.weight" in load_file(tmp_path / "wide" / "model.safetensors")
    assert_same_function(tiny.logits(model, IDS), _greedy(model), tmp_path / "wide")


@pytest.mark.parametrize(
    "name,flags,words",
    [
        ("llama-mha", ["--attention", "head-dim"], ["rotary", "--attention heads"]),
        ("pythia", ["--attention", "head-dim"], ["rotary", "--attention heads"]),
        ("gemma-mqa-tied", ["--attention", "head-dim"], ["rotary", "--attention heads"]),
        ("phi3-gqa", ["--attention", "head-dim"], ["rotary", "--attention heads"]),
        ("pythia", ["--kv-heads", "keep"], ["key/value heads", "--kv-heads replicate"]),
        ("gpt2", ["--kv-heads", "keep"], ["key/value heads", "--kv-heads replicate"]),
        ("opt", ["--kv-heads", "keep"], ["key/value heads", "--kv-heads replicate"]),
    ],
)
def test_refusals_are_one_line(sources, tmp_path, cli, name, flags, words):
    src, _, _ = sources(name)
    code, out, err = cli("expand", str(src), str(tmp_path / "wide"), *flags)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hyperclone: error:"), err
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "wide").exists()
    with pytest.raises(HypercloneError):
        expand(src, tmp_path / "wide", verify=False, **_flags_to_kw(flags))


def _flags_to_kw(flags: list[str]) -> dict:
    return {flags[0].removeprefix("--").replace("-", "_"): flags[1]}


@pytest.mark.parametrize(
    "name,flags",
    [
        ("gpt2", ["--factor", "3", "--attention", "head-dim", "--noise", "10"]),
        ("pythia", ["--factor", "2", "--layout", "diagonal"]),
        ("gemma-mqa-tied", ["--factor", "2", "--kv-heads", "keep"]),
        ("olmo2", ["--factor", "2", "--ffn-factor", "4"]),
    ],
)
def test_cli_expand_verifies(sources, tmp_path, cli, name, flags):
    src, _, _ = sources(name)
    code, out, err = cli("expand", str(src), str(tmp_path / "wide"), *flags, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["verify"]["passed"] is True
    assert summary["family"] == MODELS[name][1]


@pytest.mark.parametrize("name", list(MODELS))
def test_inspect_shows_family(sources, cli, name):
    src, _, _ = sources(name)
    _, fam, _, gqa, tied = MODELS[name]
    info = inspect(src, factor=2)
    assert info.family == fam
    assert info.tied == tied
    assert info.hidden == 32 and info.layers == 2 and info.heads == 4
    assert (info.kv_heads < info.heads) == gqa
    assert info.head_dim == 8
    assert info.expansion["hidden"] == 64 and info.expansion["heads"] == 8
    code, out, _ = cli("inspect", str(src), "--factor", "2", "--json")
    assert code == 0 and json.loads(out)["family"] == fam


def test_diagonal_layout_puts_w_on_the_diagonal(sources, tmp_path):
    src, _, _ = sources("llama-gqa-bias")
    expand(src, tmp_path / "wide", verify=False, factor=2, layout="diagonal")
    w = load_file(src / "model.safetensors")["model.layers.0.self_attn.o_proj.weight"]
    wide = load_file(tmp_path / "wide" / "model.safetensors")
    o = wide["model.layers.0.self_attn.o_proj.weight"]
    assert torch.equal(o[:32, :32], w) and torch.equal(o[32:, 32:], w)
    assert not o[:32, 32:].any() and not o[32:, :32].any()


def test_config_tables_write_what_the_config_sets_or_implies_wrongly():
    """One table per family, one writer: keys the config sets are widened; a size it leaves
    implied is written only where the implied value would be wrong."""
    gpt2 = FAMILIES_BY_NAME["gpt2"]
    cfg = _gpt2().to_dict()  # n_inner: null, i.e. 4·n_embd
    sizes = dict(hidden=64, embed=64, ffn=256, heads=8, kv_heads=8, head_dim=8)
    assert gpt2.widened_config(cfg, sizes) == {"n_embd": 64, "n_head": 8}
    assert gpt2.widened_config(cfg, sizes | {"ffn": 384})["n_inner"] == 384  # --ffn-factor 3
    llama = FAMILIES_BY_NAME["llama"]
    cfg = tiny.llama_config().to_dict()
    del cfg["num_key_value_heads"]  # implied = heads; --kv-heads keep makes that wrong
    sizes = dict(hidden=64, embed=64, ffn=96, heads=8, kv_heads=4, head_dim=8)
    assert llama.widened_config(cfg, sizes)["num_key_value_heads"] == 4
    neox = FAMILIES_BY_NAME["gpt_neox"]
    cfg = {k: v for k, v in _neox().to_dict().items() if k != "intermediate_size"}
    assert neox.dims(cfg).ffn == 4 * 32
    assert neox.widened_config(cfg, sizes | {"ffn": 256})["intermediate_size"] == 256
