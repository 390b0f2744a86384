"""Figures of the growth experiment (matplotlib, Agg backend, PNG), all drawn from results.json:

- loss.png: per operator, validation loss of the grown model and of its random-init control,
  mean over seeds with a min–max band, against steps (top) and training FLOPs (bottom, the
  small model's training placed before the grown model);
- speedup.png: speed-up per operator, mean with min–max error bars and one dot per seed;
- symmetry.png: how far the copies made by growth drift apart (width, depth, experts);
- schedule.png: the schedule study and the small-length study.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GROWN = "tab:blue"
RANDOM = "black"


def _runs(res: dict, **want) -> list[dict]:
    return [r for r in res["runs"].values() if all(r["job"].get(k) == v for k, v in want.items())]


def _band(curves: list[dict], key: str = "val_loss"):
    steps = curves[0]["step"]
    m = min(len(c[key]) for c in curves)
    cols = [[c[key][i] for c in curves] for i in range(m)]
    return (
        steps[:m],
        [sum(v) / len(v) for v in cols],
        [min(v) for v in cols],
        [max(v) for v in cols],
    )


def _tokens_per_step(res: dict) -> int:
    return res["config"]["batch"] * res["config"]["seq"]


def _flops_per_step(res: dict, stats: dict) -> float:
    return 3 * stats["flops_per_token"] * _tokens_per_step(res)  # forward + backward


def _grown_curves(res: dict, arm: str, small_steps: int | None = None) -> list[dict]:
    ch = res["choices"]["arms"].get(arm)
    if not ch:
        return []
    n = small_steps or res["config"]["small_steps"]
    return [
        r["curve"]
        for r in _runs(res, kind="grown", arm=arm, small_steps=n, shape=ch["shape"], lr=ch["lr"])
    ]


def _random_curves(res: dict, target: str) -> list[dict]:
    lr = res["choices"]["random_lr"].get(target)
    return [r["curve"] for r in _runs(res, kind="random", target=target, lr=lr)]


def loss_plot(res: dict, path: str) -> None:
    sm = res["summary"]
    arms = list(sm["arms"])
    if not arms:
        return
    fig, axes = plt.subplots(2, len(arms), figsize=(4.2 * len(arms), 7.8), squeeze=False)
    small_n = res["config"]["small_steps"]
    f_small = _flops_per_step(res, res["small"]["stats"])
    small_curves = [r["curve"] for r in _runs(res, kind="small", steps=small_n)]
    lo, hi = [], []
    for j, name in enumerate(arms):
        a = sm["arms"][name]
        t = res["targets"][a["target"]]
        f_t = _flops_per_step(res, t["stats"])
        tgt = sm["targets"][a["target"]]["mean"]
        for row, ax in enumerate(axes[:, j]):
            for curves, col, lab in (
                (_random_curves(res, a["target"]), RANDOM, "random init"),
                (_grown_curves(res, name), GROWN, f"grown ({a['shape']}, lr {a['lr']:g})"),
            ):
                if not curves:
                    continue
                x, m, mn, mx = _band(curves)
                off = small_n * f_small if (row == 1 and col == GROWN) else 0.0
                if row == 1:
                    x = [off + s * f_t for s in x]
                ax.plot(x, m, color=col, lw=1.5, label=f"{lab}, {len(curves)} seeds")
                ax.fill_between(x, mn, mx, color=col, alpha=0.2, lw=0)
                lo.append(min(mn))
            if row == 1 and small_curves:
                x, m, mn, mx = _band(small_curves)
                x = [s * f_small for s in x]
                ax.plot(x, m, color="grey", ls=":", lw=1.4, label=f"small model ({small_n} steps)")
                ax.fill_between(x, mn, mx, color="grey", alpha=0.15, lw=0)
            if tgt is not None:
                ax.axhline(tgt, color=RANDOM, ls="--", lw=0.8)
                hi.append(tgt + 0.45)
            reach = a["steps_to_target"]
            if row == 0 and reach.get("mean") is not None:
                sp = a["speedup"]
                ax.set_title(
                    f"{name}: {a['label']}\n{a['params'] / 1e6:.2f} M params; speed-up "
                    f"{sp['mean']:.2f}x [{sp['min']:.2f}–{sp['max']:.2f}]",
                    fontsize=9,
                )
            elif row == 0:
                why = (
                    "random's final not reached"
                    if a.get("seeds_run")
                    else "not run (incomplete run)"
                )
                ax.set_title(f"{name}: {a['label']}\n{why}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.set_xlabel("steps of the large model" if row == 0 else "training FLOPs")
            if j == 0:
                ax.set_ylabel("validation loss (nats/token)")
            ax.legend(fontsize=7, loc="upper right")
    for ax in axes.flat:
        if lo and hi:
            ax.set_ylim(min(lo) - 0.03, max(hi))
    fig.suptitle(
        "Validation loss, mean over seeds with min–max band; dashed: random init's final "
        "(mean).\nBottom: against training FLOPs, the small model's training (dotted) charged "
        "before the grown model.",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def speedup_plot(res: dict, path: str) -> None:
    sm = res["summary"]
    arms = list(sm["arms"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=False)
    for ax, key, title in (
        (axes[0], "speedup", "Speed-up in steps of the large model"),
        (axes[1], "speedup_flops", "Speed-up, the small model's training counted (FLOPs)"),
    ):
        for i, name in enumerate(arms):
            a = sm["arms"][name][key]
            if a["mean"] is None:
                ran = sm["arms"][name].get("seeds_run")
                ax.text(i, 0.05, "never" if ran else "not run", ha="center", fontsize=8)
                continue
            # below random's final loss from step 0 (the small model alone is): the steps
            # figure is only a bound, set by the evaluation interval; hatched and labelled
            bound = any(p["speedup_lower_bound"] for p in sm["arms"][name]["per_seed"].values())
            ax.bar(
                i,
                a["mean"],
                color=plt.get_cmap("tab10")(i),
                alpha=0.4 if bound else 0.75,
                hatch="//" if bound else None,
                width=0.6,
            )
            ax.errorbar(
                i,
                a["mean"],
                yerr=[[a["mean"] - a["min"]], [a["max"] - a["mean"]]],
                color="black",
                capsize=5,
                lw=1.2,
            )
            vals = [p[key] for p in sm["arms"][name]["per_seed"].values() if p[key] is not None]
            ax.plot([i] * len(vals), vals, "o", color="black", ms=3)
            label = f"{a['mean']:.2f}x"
            if bound:
                label = f"≥ {label}\nbelow at step 0" if key == "speedup" else f"{label}\n(step 0)"
            ax.text(i, a["max"] + 0.04, label, ha="center", va="bottom", fontsize=8)
        ax.axhline(1, color="black", lw=0.8)
        ax.axhline(2, color="black", lw=0.8, ls="--")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the labels above the bars
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("speed-up vs random init (x)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"Mean over {len(sm['seeds'])} seeds, error bars min–max, dots = seeds; "
        "dashed line: the 2x goal",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def symmetry_plot(res: dict, path: str) -> None:
    sm = res["summary"]
    panels = [
        ("mean_rows", "Width copies: cosine between the 2 copies\n(solid rows, dashed columns)"),
        ("depth", "Depth copies: inserted block vs the layer it copies\n(matrices not zeroed)"),
        ("experts", "Experts: cosine of expert 0 with the others"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        drawn = False
        for i, name in enumerate(sm["arms"]):
            curves = _grown_curves(res, name)
            curves = [c for c in curves if c.get("symmetry") and key in c["symmetry"][0]]
            col = plt.get_cmap("tab10")(i)
            for k, ls in ((key, "-"), ("mean_cols", "--") if key == "mean_rows" else (None, None)):
                if k is None or not curves or k not in curves[0]["symmetry"][0]:
                    continue
                sym = [{"step": c["step"], "v": [s[k] for s in c["symmetry"]]} for c in curves]
                x, m, mn, mx = _band(sym, "v")
                ax.plot(x, m, color=col, ls=ls, label=name if ls == "-" else None)
                ax.fill_between(x, mn, mx, color=col, alpha=0.15, lw=0)
                drawn = True
        t = res["summary"]["targets"]
        for tname in t:
            rc = _random_curves(res, tname)
            rc = [c for c in rc if c.get("symmetry") and key in c["symmetry"][0]]
            if rc:
                ax.plot(
                    rc[0]["step"],
                    [s[key] for s in rc[0]["symmetry"]],
                    color=RANDOM,
                    lw=0.8,
                    label=f"random init ({tname})",
                )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step of the large model")
        ax.set_ylabel("cosine similarity")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no arm of this kind", ha="center", transform=ax.transAxes)
    fig.suptitle("Symmetry of the copies made by growth (chosen schedule; seeds: mean, band)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def schedule_plot(res: dict, path: str) -> None:
    sm = res["summary"]
    st = sm.get("schedule_study")
    if not st:
        return
    cfg = res["config"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    cmap = plt.get_cmap("tab10")
    shapes = sorted({c["shape"] for c in st["candidates"].values()})
    lrs = sorted({c["lr"] for c in st["candidates"].values()})
    for r in _runs(
        res, kind="grown", arm=st["arm"], seed=st["seed"], small_steps=cfg["small_steps"]
    ):
        j = r["job"]
        c = r["curve"]
        m = st["candidates"].get(f"{j['shape']} @ {j['lr']:g}", {})
        lab = f"{j['shape']} @ {j['lr']:g}: {_steps(m.get('steps_to_target'))}"
        ax.plot(
            c["step"],
            c["val_loss"],
            color=cmap(shapes.index(j["shape"])),
            ls="-" if j["lr"] == lrs[-1] else "--",
            lw=1.3,
            label=lab,
        )
    t = st["target"]
    lows = [min(c["final"], c["step0"]) for c in st["candidates"].values()]
    if t is not None:
        ax.axhline(t, color=RANDOM, ls="--", lw=0.8, label=f"random's final {t:.3f}")
        ax.set_ylim(min(lows + [t]) - 0.05, t + 0.45)
    ax.set_title(
        f"Schedule study, {st['arm']}, seed {st['seed']}: winner {st['winner']}\n"
        "(label: steps to reach and stay at random's final)",
        fontsize=9,
    )
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    ax = axes[1]
    sl = sm.get("small_length")
    if sl:
        for i, (steps, _r) in enumerate(sl["by_small_steps"].items()):
            curves = _grown_curves(res, sl["arm"], int(steps))
            if not curves:
                continue
            x, m, mn, mx = _band(curves)
            ax.plot(x, m, color=cmap(i), label=f"small model trained {steps} steps")
            ax.fill_between(x, mn, mx, color=cmap(i), alpha=0.2, lw=0)
        tg = sm["targets"][res["arms"][sl["arm"]]["target"]]["mean"]
        lows = [r["final"]["min"] for r in sl["by_small_steps"].values() if r["final"]["min"]]
        if tg is not None:
            ax.axhline(tg, color=RANDOM, ls="--", lw=0.8, label="random's final (mean)")
            ax.set_ylim(min(lows + [tg]) - 0.05, tg + 0.6)
        ax.set_title(f"{sl['arm']} grown from a shorter- or longer-trained small model", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _steps(x) -> str:
    return "never" if x is None else f"{x}"


def make_all(res: dict, out: str) -> None:
    import summary

    if "summary" not in res:
        res["summary"] = summary.summarise(res)
    table = summary.tables(res)
    if table:
        with open(os.path.join(out, "headline.md"), "w") as fh:
            fh.write(table)
    loss_plot(res, os.path.join(out, "loss.png"))
    speedup_plot(res, os.path.join(out, "speedup.png"))
    symmetry_plot(res, os.path.join(out, "symmetry.png"))
    schedule_plot(res, os.path.join(out, "schedule.png"))


if __name__ == "__main__":  # re-draw from a results.json
    import json
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(d, "results.json")) as fh:
        make_all(json.load(fh), d)
