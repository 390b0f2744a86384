"""Figures of the speed-up experiment (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _order(arms: dict) -> list[str]:
    clones = [k for k in arms if k != "random"]
    return (["random"] if "random" in arms else []) + clones


def _color(name: str, i: int) -> str:
    if name == "random":
        return "black"
    return plt.get_cmap("tab10")(i % 10)


def _ylim(ax, curves, target):
    lo = min(min(c) for c in curves)
    hi = target + 0.6 if target is not None else max(max(c[1:] or c) for c in curves)
    ax.set_ylim(lo - 0.03, hi)


def loss_plot(results: dict, path: str) -> None:
    arms = results["arms"]
    head = results.get("headline", {})
    target = head.get("random_final_val_loss")
    small = results["small"]
    ratio = head.get("small_cost_flops_ratio", 0.0)
    s_steps = head.get("small_steps", 0)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    curves = []
    for i, name in enumerate(_order(arms)):
        arm = arms[name]
        lr = arm.get("best_lr") or next(iter(arm["runs"]))
        c = arm["runs"][lr]
        label = f"{name} (lr {lr}) final {c['val_loss'][-1]:.3f}"
        row = head.get("arms", {}).get(name, {})
        if row.get("speedup"):
            r, x = row["steps_to_random_final"], row["speedup"]
            label += f", reaches random's final at {r} ({x:.2f}x)"
        elif row.get("steps_to_random_final") == 0:
            label += ", below random's final from step 0"
        col = _color(name, i)
        axes[0].plot(c["step"], c["val_loss"], color=col, label=label, lw=1.6)
        off = 0.0 if name == "random" else s_steps * ratio
        axes[1].plot([s + off for s in c["step"]], c["val_loss"], color=col, lw=1.6, label=name)
        curves.append(c["val_loss"])
        if row.get("steps_to_random_final") is not None:
            r = row["steps_to_random_final"]
            axes[0].plot([r], [c["val_loss"][c["step"].index(r)]], "o", color=col, ms=5)
    sc = small["curve"]
    axes[1].plot(
        [s * ratio for s in sc["step"]],
        sc["val_loss"],
        color="grey",
        ls=":",
        lw=1.6,
        label=f"small model ({s_steps} steps x {ratio:.2f} FLOPs)",
    )
    curves.append(sc["val_loss"])
    for ax in axes:
        if target is not None:
            ax.axhline(target, color="black", ls="--", lw=0.8)
        ax.axhline(small["final_val_loss"], color="grey", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
    _ylim(axes[0], curves, target)
    axes[0].set_xlabel("wide-model training steps")
    axes[0].set_ylabel("validation loss (nats/token, held-out plays)")
    axes[0].set_title("Wide model (hidden x2): validation loss per step")
    axes[1].set_xlabel("compute in wide-step equivalents (FLOPs), small model's training included")
    axes[1].set_title("Same curves, small model's cost counted")
    axes[0].legend(fontsize=7.5, loc="upper right")
    axes[1].legend(fontsize=7.5, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_plot(results: dict, path: str) -> None:
    arms = results["arms"]
    names = _order(arms)
    target = results.get("headline", {}).get("random_final_val_loss")
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.6), sharey=True)
    if len(names) == 1:
        axes = [axes]
    curves = []
    for ax, name in zip(axes, names, strict=False):
        for j, (lr, c) in enumerate(arms[name]["runs"].items()):
            best = lr == arms[name].get("best_lr")
            ax.plot(
                c["step"],
                c["val_loss"],
                lw=1.8 if best else 1.0,
                color=plt.get_cmap("viridis")(j / max(1, len(arms[name]["runs"]) - 1)),
                label=f"lr {lr}: {c['val_loss'][-1]:.3f}" + (" *" if best else ""),
            )
            curves.append(c["val_loss"])
        if target is not None:
            ax.axhline(target, color="black", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _ylim(axes[0], curves, target)
    axes[0].set_ylabel("validation loss")
    fig.suptitle("Peak-LR sweep, identical for every arm (* = kept)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def symmetry_plot(results: dict, path: str) -> None:
    arms = results["arms"]
    names = _order(arms)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for i, name in enumerate(names):
        arm = arms[name]
        lr = arm.get("best_lr") or next(iter(arm["runs"]))
        c = arm["runs"][lr]
        if not c.get("symmetry"):
            continue
        col = _color(name, i)
        axes[0].plot(c["step"], [s["mean_rows"] for s in c["symmetry"]], color=col, label=name)
        axes[0].plot(c["step"], [s["mean_cols"] for s in c["symmetry"]], color=col, ls="--", lw=0.9)
        layers = sorted(k for k in c["symmetry"][0] if k.startswith("layer"))
        for k in layers:
            axes[1].plot(
                c["step"],
                [s[k] for s in c["symmetry"]],
                color=col,
                lw=0.9,
                alpha=0.35 + 0.65 * (int(k[5:]) + 1) / len(layers),
                label=name if k == layers[-1] else None,
            )
    axes[0].set_title(
        "Cosine between cloned copies (mean over weights)\n"
        "solid: rows (copies of an output unit), dashed: columns (weights read from a copy)",
        fontsize=9,
    )
    axes[1].set_title("Per decoder layer (mean of rows and columns), darker = deeper", fontsize=9)
    for ax in axes:
        ax.set_xlabel("wide-model training step")
        ax.set_ylabel("cosine similarity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x, fmt):
    return "—" if x is None else format(x, fmt)


def headline_table(results: dict) -> str:
    """The headline as a Markdown table (also written to headline.md)."""
    head = results.get("headline", {})
    if "arms" not in head:
        return ""
    n = head["random_steps"]
    cost = head["small_cost_in_wide_steps_flops"]
    lines = [
        f"Random init: best peak LR {head['random_best_lr']:g}, final validation loss "
        f"**{head['random_final_val_loss']:.3f}** after {n} steps. Small model: "
        f"{head['small_steps']} steps, final {head['small_final_val_loss']:.3f}; its training "
        f"costs {cost:.0f} wide-step equivalents in FLOPs "
        f"({head['small_cost_flops_ratio']:.2f} per step).",
        "",
        "| arm | best peak LR | final val loss | gap vs random | steps to random's final "
        "| speed-up | speed-up, small model's cost counted |",
        "|---|---|---|---|---|---|---|",
        f"| random init | {head['random_best_lr']:g} | {head['random_final_val_loss']:.3f} | — "
        f"| {n} | 1.00x | 1.00x |",
    ]
    for name, r in head["arms"].items():
        reach = r["steps_to_random_final"]
        if reach == 0:
            sp = "already below at step 0"
        else:
            sp = _f(r["speedup"], ".2f") + ("x" if r["speedup"] else " (never)")
        spc = r["speedup_counting_small_flops"]
        lines.append(
            f"| {name} | {r['best_lr']:g} | {r['final_val_loss']:.3f} "
            f"| {r['final_loss_gap_vs_random']:+.3f} | {_f(reach, 'd')} | {sp} "
            f"| {_f(spc, '.2f')}{'x' if spc else ''} |"
        )
    lines += [
        "",
        f'Validation every {head["eval_every"]} steps; "steps to random\'s final" is the first '
        "evaluation at or below the random-init model's final loss; gap > 0 = better than random.",
    ]
    return "\n".join(lines) + "\n"


def make_all(results: dict, out: str) -> None:
    table = headline_table(results)
    if table:
        with open(os.path.join(out, "headline.md"), "w") as fh:
            fh.write(table)
    loss_plot(results, os.path.join(out, "loss.png"))
    symmetry_plot(results, os.path.join(out, "symmetry.png"))
    sweep_plot(results, os.path.join(out, "lr_sweep.png"))


if __name__ == "__main__":  # re-draw from a results.json
    import json
    import sys

    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(d, "results.json")) as fh:
        make_all(json.load(fh), d)
