"""The coverage matrix's CI subset (`tools/coverage.py --quick`): the supported families come
out exact at ×2 and ×3 under the tool's independent check, the refused one is refused with a
reason, and the reports render. Written into a temporary directory: docs/ is never touched."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    # loaded by path: the name `coverage` belongs to coverage.py, the test-coverage package
    spec = importlib.util.spec_from_file_location("hc_coverage_tool", ROOT / "tools/coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_coverage_quick(tmp_path: Path) -> None:
    tool = _tool()
    assert tool.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "coverage.json").read_text())
    rows = {r["model_type"]: r for r in data["rows"]}
    assert list(rows) == list(tool.QUICK)
    for t in ("llama", "qwen2", "gpt2", "opt", "gpt_neox"):
        r = rows[t]
        assert r["class"] == "dense", r
        assert r["result"] == "exact", r
        for n in ("2", "3"):
            f = r["factors"][n]
            assert f["rel"] <= tool.REL_TOL and f["argmax_agreement"] == 1.0, f
            assert not f["missing"] and not f["unexpected"], f
    xglm = rows["xglm"]
    assert xglm["class"] == "dense" and xglm["result"] == "refused", xglm
    assert "XGLMForCausalLM cannot be widened exactly: sinusoidal" in xglm["reason"]

    md = (tmp_path / "coverage.md").read_text()
    assert "| llama | dense | LlamaForCausalLM | exact |" in md
    snippet = tool.render_readme(data)
    assert "5 of 6 dense decoder model types in transformers" in snippet
