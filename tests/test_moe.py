"""Mixture-of-experts: every MoE family the installed transformers builds, widened ×2 and ×3
in both expert layouts (one tensor per expert, fused 3-D), and upcycling dense models into
their MoE family. Each output loads with no missing or unexpected keys and its logits
equal the source's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import tiny_moe
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hyperclone_cli.clone import widen, widen_full
from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.inspection import inspect
from hyperclone_cli.pipeline import expand
from hyperclone_cli.verification import verify

RTOL = 1e-5  # relative logit error of an exact widening in float32 (measured ≤ 6e-6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def _names(path: Path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())  # noqa: SIM118 (safe_open is not a mapping)


def _source(tmp_path: Path, name: str, layout: str, **kw) -> Path:
    src = tiny.save(tiny_moe.MOE[name](**kw), tmp_path / "src")
    return tiny_moe.save_fused(src) if layout == "fused" else src


def _same_function(src: Path, dst: Path) -> torch.nn.Module:
    a, b = tiny.load(src), tiny.load(dst)
    ids = tiny.tokens()
    assert _rel(tiny.logits(a, ids), tiny.logits(b, ids)) < RTOL
    return b


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("layout", ["split", "fused"])
@pytest.mark.parametrize("name", list(tiny_moe.MOE))
def test_moe_family_widens_exactly(tmp_path, name, layout, factor):
    src = _source(tmp_path, name, layout)
    expand(src, tmp_path / "dst", factor=factor, verify=False)
    wide = _same_function(src, tmp_path / "dst")
    # the source's layout is kept, the expert count and top-k too
    assert _names(tmp_path / "dst") == _names(src)
    cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    assert cfg["hidden_size"] == factor * src_cfg["hidden_size"]
    assert cfg["num_experts_per_tok"] == src_cfg["num_experts_per_tok"]
    assert type(wide).__name__ == src_cfg["architectures"][0]


@pytest.mark.parametrize(
    "name,opts",
    [
        ("qwen2_moe", {"factor": 2, "ffn_factor": 3, "noise": 10.0}),
        ("deepseek_v3", {"factor": 2, "ffn_factor": 3, "noise": 10.0, "layout": "diagonal"}),
        ("mixtral", {"factor": 2, "kv_heads": "keep", "noise": 10.0}),
        ("granitemoeshared", {"factor": 3, "ffn_factor": 2, "noise": 10.0}),
    ],
)
def test_moe_options(tmp_path, name, opts):
    for layout in ("split", "fused"):
        src = _source(tmp_path / layout, name, layout)
        expand(src, tmp_path / layout / "dst", verify=False, **opts)
        _same_function(src, tmp_path / layout / "dst")


@pytest.mark.parametrize("name", ["qwen2_moe", "granitemoe", "phimoe"])
def test_tied_moe_keeps_the_tie(tmp_path, name):
    src = _source(tmp_path, name, "split", tie_word_embeddings=True)
    result = expand(src, tmp_path / "dst", factor=2, verify=False)
    assert result.plan.tie == "kept"
    _same_function(src, tmp_path / "dst")


@pytest.mark.parametrize("layout", ["split", "fused"])
def test_noise_never_goes_into_the_router(tmp_path, layout):
    """Routers and the shared expert's gate are the tiled W/n; the experts are noised."""
    src = _source(tmp_path, "qwen2_moe", layout)
    expand(src, tmp_path / "dst", factor=2, noise=3.0, verify=False)
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "dst" / "model.safetensors")
    for gate in ("gate", "shared_expert_gate"):
        key = f"model.layers.0.mlp.{gate}.weight"
        assert torch.equal(b[key], torch.cat([a[key] / 2] * 2, dim=1))
    key = next(k for k in a if "experts" in k and "down_proj" in k)
    assert not torch.equal(b[key][..., : a[key].shape[-1]], b[key][..., a[key].shape[-1] :])


def test_fused_experts_are_widened_in_chunks_along_the_expert_axis():
    """clone.widen yields a 3-D expert tensor a few experts at a time, same bytes."""
    from hyperclone_cli.clone import AxisMap, identity_map, tile_map

    w = torch.randn(6, 2 * 5, 4)  # [E, 2I, H]
    axes = (
        AxisMap(identity_map(6), 6, "out"),
        AxisMap(torch.cat([tile_map(5, 2), tile_map(5, 2) + 5]), 10, "out"),
        AxisMap(tile_map(4, 2), 4, "in"),
    )
    chunks = list(widen(w, axes, max_chunk_elements=2 * 20 * 8))
    assert [c.shape[0] for c in chunks] == [2, 2, 2]
    assert torch.equal(torch.cat(chunks), widen_full(w, axes))
    # gate rows [g; g], then up rows [u; u]: each part cloned in its own place
    full = widen_full(w, axes)
    assert torch.equal(full[:, :5, :4], w[:, :5] / 2)
    assert torch.equal(full[:, 5:10, :4], w[:, :5] / 2)
    assert torch.equal(full[:, 10:15, 4:], w[:, 5:] / 2)


def test_deepseek_attention_keeps_its_heads(tmp_path):
    src = _source(tmp_path, "deepseek_v2", "split")
    expand(src, tmp_path / "dst", factor=2, verify=False)
    cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    for key in ("num_attention_heads", "q_lora_rank", "kv_lora_rank", "v_head_dim"):
        assert cfg[key] == src_cfg[key]
    assert cfg["moe_intermediate_size"] == 2 * src_cfg["moe_intermediate_size"]


# ---- upcycling ------------------------------------------------------------------------

DENSE = dict(tiny_moe.COMMON)
UPCYCLE = {
    "llama": (lambda: T.LlamaConfig(**DENSE), "MixtralForCausalLM"),
    "llama-tied": (
        lambda: T.LlamaConfig(**(DENSE | dict(tie_word_embeddings=True))),
        "MixtralForCausalLM",
    ),
    "mistral-sliding": (lambda: T.MistralConfig(**DENSE, sliding_window=5), "MixtralForCausalLM"),
    "qwen2": (lambda: T.Qwen2Config(**DENSE), "Qwen2MoeForCausalLM"),
    "qwen2-tied": (
        lambda: T.Qwen2Config(**(DENSE | dict(tie_word_embeddings=True))),
        "Qwen2MoeForCausalLM",
    ),
    "qwen3": (lambda: T.Qwen3Config(**DENSE, head_dim=16), "Qwen3MoeForCausalLM"),
    "llama3-rope-scaling": (
        lambda: T.LlamaConfig(
            **DENSE,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=5e5,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
        "MixtralForCausalLM",
    ),
}


@pytest.mark.parametrize(
    "opts",
    [
        {"experts": 4},
        {"experts": 4, "top_k": 1, "factor": 2, "noise": 10.0},
        {"experts": 3, "top_k": 3, "factor": 3},
    ],
    ids=["e4", "e4-k1-x2-noise", "e3-k3-x3"],
)
@pytest.mark.parametrize("name", list(UPCYCLE))
def test_upcycle_is_exact(tmp_path, name, opts):
    make, arch = UPCYCLE[name]
    src = tiny.save(make(), tmp_path / "src")
    expand(src, tmp_path / "dst", verify=False, **opts)
    moe = _same_function(src, tmp_path / "dst")
    assert type(moe).__name__ == arch
    cfg = moe.config
    assert cfg.num_experts_per_tok == opts.get("top_k", 2)
    experts = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    assert experts == opts["experts"]
    # the experts are the dense FFN; the routers are random (tokens spread over experts)
    ids = tiny.tokens()
    with torch.no_grad():
        out = moe(ids, output_router_logits=True)
    chosen = out.router_logits[0].argmax(-1)
    assert len(set(chosen.tolist())) > 1


def test_upcycle_carries_what_the_moe_class_would_default_differently(tmp_path):
    """config.json without rope or eps: Llama's defaults (θ 1e4, eps 1e-6) must reach the
    Mixtral config, whose own defaults (1e6, 1e-5) would change the logits."""
    src = tiny.save(T.LlamaConfig(**DENSE), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    for key in ("rope_parameters", "rope_theta", "rope_scaling", "rms_norm_eps"):
        cfg.pop(key, None)
    (src / "config.json").write_text(json.dumps(cfg))
    expand(src, tmp_path / "dst", experts=4, verify=False)
    out = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert out["rope_parameters"]["rope_theta"] == 10000.0
    assert out["rms_norm_eps"] == 1e-6
    _same_function(src, tmp_path / "dst")


def test_upcycle_writes_per_expert_tensors_and_the_provenance(tmp_path):
    src = tiny.save(T.Qwen2Config(**DENSE), tmp_path / "src")
    expand(src, tmp_path / "dst", experts=3, factor=2)  # verified
    names = _names(tmp_path / "dst")
    assert "model.layers.1.mlp.experts.2.down_proj.weight" in names
    assert "model.layers.1.mlp.shared_expert_gate.weight" in names
    assert not any(".mlp.down_proj" in n for n in names)
    card = (tmp_path / "dst" / "README.md").read_text()
    assert "upcycled" in card and "Qwen2MoeForCausalLM" in card
    prov = json.loads((tmp_path / "dst" / "config.json").read_text())["hyperclone"]
    assert (prov["experts"], prov["top_k"]) == (3, 2)


@pytest.mark.parametrize(
    "config,message",
    [
        (lambda: T.Olmo2Config(**DENSE), "cannot upcycle model_type 'olmo2'"),
        (lambda: T.GemmaConfig(**DENSE, head_dim=8), "cannot upcycle model_type 'gemma'"),
        (lambda: T.LlamaConfig(**DENSE, attention_bias=True), "attention_bias = True"),
        (lambda: T.LlamaConfig(**DENSE, mlp_bias=True), "mlp_bias = True"),
        (
            lambda: T.Qwen3Config(**DENSE, use_sliding_window=True, max_window_layers=1),
            "per-layer attention types",
        ),
    ],
    ids=["olmo2", "gemma", "llama-attention-bias", "llama-mlp-bias", "qwen3-sliding"],
)
def test_upcycle_refuses_what_it_cannot_keep_exact(tmp_path, config, message):
    src = tiny.save(config(), tmp_path / "src")
    with pytest.raises(HypercloneError, match=message):
        expand(src, tmp_path / "dst", experts=4, dry_run=True)


def test_upcycling_an_moe_is_refused(tmp_path):
    src = _source(tmp_path, "mixtral", "split")
    with pytest.raises(HypercloneError, match="'mixtral' .it is already a mixture of experts"):
        expand(src, tmp_path / "dst", experts=4, dry_run=True)


def test_cli_factor_one_needs_a_growth_option(tmp_path, cli):
    src = tiny.save(T.LlamaConfig(**DENSE), tmp_path / "src")
    code, _, err = cli("expand", src, tmp_path / "a", "--factor", "1")
    assert code == 2 and "--factor" in err and "--experts" in err
    code, _, err = cli("expand", src, tmp_path / "b", "--top-k", "2")
    assert code == 2 and "--top-k" in err
    code, out, err = cli("expand", src, tmp_path / "c", "--experts", "4", "--factor", "1")
    assert code == 0, err
    _same_function(src, tmp_path / "c")


def test_inspect_shows_experts_before_and_after(tmp_path, cli):
    src = tiny.save(T.LlamaConfig(**DENSE), tmp_path / "src")
    info = inspect(src, experts=8, top_k=2)
    exp = info.expansion
    assert info.moe is None and exp["architecture"] == "MixtralForCausalLM"
    assert (exp["moe"]["experts"], exp["moe"]["top_k"], exp["moe"]["shared_experts"]) == (8, 2, 0)
    # active per token: all but 6 of the 8 copies of each FFN
    ffn = 3 * DENSE["hidden_size"] * DENSE["intermediate_size"] * DENSE["num_hidden_layers"]
    assert exp["moe"]["active_params"] == exp["params"] - 6 * ffn
    code, out, _ = cli("inspect", src, "--experts", "8")
    assert code == 0 and "MixtralForCausalLM" in out and "8 / 2 / 0" in out

    moe = _source(tmp_path / "m", "qwen2_moe", "fused")
    info = inspect(moe, factor=2)
    assert (info.moe["experts"], info.moe["top_k"], info.moe["shared_experts"]) == (4, 2, 1)
    assert info.moe["active_params"] < info.params


# ---- verify -----------------------------------------------------------------------------


def _corrupt_expert(dst: Path, layer: int) -> None:
    file = dst / "model.safetensors"
    state = load_file(file)
    key = next(k for k in sorted(state) if f"layers.{layer}." in k and "experts" in k)
    state[key] = state[key] * 3.0
    save_file(state, str(file), metadata={"format": "pt"})


@pytest.mark.parametrize("streamed", [False, True], ids=["full", "streamed"])
@pytest.mark.parametrize("layout", ["split", "fused"])
def test_verify_moe(tmp_path, layout, streamed):
    src = _source(tmp_path, "mixtral", layout)
    expand(src, tmp_path / "dst", factor=2, verify=False)
    assert verify(src, tmp_path / "dst", streamed=streamed).passed
    _corrupt_expert(tmp_path / "dst", layer=1)
    report = verify(src, tmp_path / "dst", streamed=streamed)
    assert not report.passed
    if streamed:
        assert report.first_bad_layer == 1


@pytest.mark.parametrize("name", list(tiny_moe.MOE))
def test_streamed_verify_reads_every_family_in_the_per_expert_layout(tmp_path, name):
    src = _source(tmp_path, name, "split")
    expand(src, tmp_path / "dst", factor=2, verify=False)
    report = verify(src, tmp_path / "dst", streamed=True)
    assert report.passed and not report.missing_keys and not report.unexpected_keys


@pytest.mark.parametrize("streamed", [False, True], ids=["full", "streamed"])
def test_verify_upcycled(tmp_path, streamed):
    src = tiny.save(T.Qwen3Config(**DENSE), tmp_path / "src")
    expand(src, tmp_path / "dst", experts=4, factor=2, verify=False)
    assert verify(src, tmp_path / "dst", streamed=streamed).passed
    _corrupt_expert(tmp_path / "dst", layer=0)
    report = verify(src, tmp_path / "dst", streamed=streamed)
    assert not report.passed
    if streamed:
        assert report.first_bad_layer == 0


def test_bf16_fused_moe_with_noise_verifies(tmp_path):
    """bf16 output with noise: the noise cancels up to bf16 rounding, verify says so."""
    src = _source(tmp_path, "mixtral", "fused")
    result = expand(src, tmp_path / "dst", factor=2, noise=10.0, dtype="bf16")
    assert result.verification.passed
    assert result.verification.rel_error < 3e-2
    with safe_open(str(tmp_path / "dst" / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.layers.0.mlp.experts.gate_up_proj").get_dtype() == "BF16"


def test_recipe_file_can_upcycle(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("factor: 1\nexperts: 4\ntop_k: 1\n")
    src = tiny.save(T.LlamaConfig(**DENSE), tmp_path / "src")
    result = expand(src, tmp_path / "dst", recipe=recipe, verify=False)
    assert result.plan.config["num_experts_per_tok"] == 1
    _same_function(src, tmp_path / "dst")
