#!/usr/bin/env python
"""Merge the results of several runs of run.py made with the same budgets (for instance the
width arms in one run and the depth and MoE arms in a later one) into one results directory,
then recompute the summary, the tables and the figures.

    python experiments/speedup/merge.py OUT RUN_DIR [RUN_DIR ...]

Runs keep their own random-init controls (each arm is compared with the control trained in
the same run, on the same machine); run ids that repeat (the small models, retrained by
each run) are kept with a `#2`, `#3`... suffix, and the first run's copy is the one reported.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import speedup_lib as L  # noqa: E402

BUDGET = ("vocab", "seq", "batch", "seeds", "small_steps", "wide_steps", "lrs", "warmup")


def merge(dirs: list[str]) -> dict:
    parts = []
    for d in dirs:
        with open(os.path.join(d, "results.json")) as fh:
            parts.append(json.load(fh))
    out = parts[0]
    out.pop("summary", None)
    out["merged_from"] = [os.path.basename(os.path.normpath(d)) for d in dirs]
    for p in parts[1:]:
        for k in BUDGET:
            if p["config"][k] != out["config"][k]:
                raise SystemExit(f"different budgets ({k}): {p['config'][k]} vs {out['config'][k]}")
        for name, arm in p["arms"].items():
            if name in out["arms"]:
                raise SystemExit(f"arm {name} is in two runs")
            out["arms"][name] = arm
            out["skipped_arms"].pop(name, None)
        for k, v in p["skipped_arms"].items():
            if k not in out["arms"]:
                out["skipped_arms"][k] = v
        out["targets"] |= {k: v for k, v in p["targets"].items() if k not in out["targets"]}
        out["grown_checkpoints"] |= p["grown_checkpoints"]
        out["choices"]["random_lr"] = p["choices"]["random_lr"] | out["choices"]["random_lr"]
        out["choices"]["arms"] |= p["choices"]["arms"]
        out["notes"] += p.get("notes", [])
        for rid, r in p["runs"].items():
            key, i = rid, 2
            while key in out["runs"]:
                key, i = f"{rid}#{i}", i + 1
            if key != rid:
                r["job"]["duplicate_of"] = rid
                r["job"]["kind"] = r["job"]["kind"] + "-duplicate"
            out["runs"][key] = r
        out["seconds_total"] = out.get("seconds_total", 0) + p.get("seconds_total", 0)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        raise SystemExit(__doc__)
    dst, dirs = argv[0], argv[1:]
    res = merge(dirs)
    import plots
    import summary

    res["summary"] = summary.summarise(res)
    os.makedirs(dst, exist_ok=True)
    L.dump_json(res, os.path.join(dst, "results.json"))
    plots.make_all(res, dst)
    print(f"merged {len(dirs)} runs into {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
