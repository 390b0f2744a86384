"""From the runs of results.json to the figures that are reported: speed-ups per seed, their
mean and spread, the schedule study, the small-length study, and the Markdown tables."""

from __future__ import annotations

import speedup_lib as L


def _agg(xs: list[float | None]) -> dict:
    got = [x for x in xs if x is not None]
    if not got:
        return {"mean": None, "min": None, "max": None, "n": 0, "of": len(xs)}
    return {
        "mean": sum(got) / len(got),
        "min": min(got),
        "max": max(got),
        "n": len(got),
        "of": len(xs),
    }


def _runs(res: dict, **want) -> dict[str, dict]:
    return {
        rid: r
        for rid, r in res["runs"].items()
        if all(r["job"].get(k) == v for k, v in want.items())
    }


def _one(res: dict, **want) -> dict | None:
    got = _runs(res, **want)
    return next(iter(got.values()))["curve"] if got else None


def _metrics(curve: dict, target: float, n_rand: int, eval_every: int, small_cost: float):
    """Speed-up of one grown run against its own seed's random control.

    steps: first evaluation from which the loss stays at or below random's final loss.
    A run below the target from step 0 on gets the resolution bound n_rand / eval_every
    (marked `lower_bound`)."""
    reach = L.steps_to_target(curve, target)
    row = {
        "final": curve["val_loss"][-1],
        "target": target,
        "gap": target - curve["val_loss"][-1],
        "step0": curve["val_loss"][0],
        "peak_after_growth": max(curve["val_loss"][1:]) if len(curve["val_loss"]) > 1 else None,
        "steps_to_target": reach,
        "speedup": None,
        "speedup_lower_bound": False,
        "speedup_flops": None,
    }
    if reach is not None:
        row["speedup"] = n_rand / max(reach, eval_every)
        row["speedup_lower_bound"] = reach == 0
        row["speedup_flops"] = n_rand / (reach + small_cost)
    return row


def summarise(res: dict) -> dict:
    cfg = res["config"]
    seeds = cfg["seeds"]
    n = cfg["wide_steps"]
    ev = cfg["eval_every"]
    main_n, alt_n = cfg["small_steps"], cfg["alt_small_steps"]
    choices = res["choices"]
    f_small = res["small"]["stats"]["flops_per_token"]
    out: dict = {"wide_steps": n, "eval_every": ev, "seeds": seeds, "targets": {}, "arms": {}}

    # small models
    out["small"] = {}
    for steps in sorted({main_n, alt_n} - {0}):
        finals = {}
        for s in seeds:
            c = _one(res, kind="small", seed=s, steps=steps)
            if c:
                finals[str(s)] = c["val_loss"][-1]
        out["small"][str(steps)] = {"final": finals, **_agg(list(finals.values()))}

    # random controls
    for t, tinfo in res["targets"].items():
        lr = choices["random_lr"].get(t) if choices["random_lr"] else None
        if lr is None:
            lr = choices["random_lr"].get(str(t)) if choices["random_lr"] else None
        finals = {}
        for s in seeds:
            c = _one(res, kind="random", target=t, seed=s, lr=lr) if lr is not None else None
            if c:
                finals[str(s)] = c["val_loss"][-1]
        out["targets"][t] = {
            "lr": lr,
            "final": finals,
            "params": tinfo["stats"]["params"],
            "active_params": tinfo["stats"]["active_params"],
            **_agg(list(finals.values())),
        }

    def small_cost(target: str, steps: int) -> float:
        return steps * f_small / res["targets"][target]["stats"]["flops_per_token"]

    # arms: the chosen schedule and peak, every seed
    for name, arm in res["arms"].items():
        ch = choices["arms"].get(name)
        t = arm["target"]
        row = {
            "label": arm["label"],
            "grow": " ".join(arm["grow"]),
            "target": t,
            "params": res["targets"][t]["stats"]["params"],
            "shape": ch["shape"] if ch else None,
            "lr": ch["lr"] if ch else None,
            "per_seed": {},
        }
        if ch:
            for s in seeds:
                c = _one(res, kind="grown", arm=name, seed=s, small_steps=main_n, **ch)
                tgt = out["targets"][t]["final"].get(str(s))
                if c and tgt is not None:
                    row["per_seed"][str(s)] = _metrics(c, tgt, n, ev, small_cost(t, main_n))
        ps = list(row["per_seed"].values())
        for k in ("final", "gap", "speedup", "speedup_flops", "steps_to_target", "step0"):
            row[k] = _agg([p[k] for p in ps])
        row["peak_after_growth"] = _agg([p["peak_after_growth"] for p in ps])
        row["seeds_run"] = len(ps)
        row["claim"] = claim(row, len(seeds))
        out["arms"][name] = row

    # schedule study (seed 0, schedule arm)
    sarm = cfg["schedule_arm"]
    s0 = seeds[0]
    if sarm in res["arms"]:
        t = res["arms"][sarm]["target"]
        tgt = out["targets"][t]["final"].get(str(s0))
        cands = {}
        for r in _runs(res, kind="grown", arm=sarm, seed=s0, small_steps=main_n).values():
            j = r["job"]
            if tgt is None:
                continue
            m = _metrics(r["curve"], tgt, n, ev, small_cost(t, main_n))
            cands[f"{j['shape']} @ {j['lr']:g}"] = m | {"shape": j["shape"], "lr": j["lr"]}
        out["schedule_study"] = {
            "arm": sarm,
            "seed": s0,
            "target": tgt,
            "winner": choices["schedule_winner"],
            "candidates": dict(sorted(cands.items(), key=lambda kv: (kv[1]["shape"], kv[1]["lr"]))),
        }

    # small-length study: the schedule arm grown from a half-trained small model
    ch = choices["arms"].get(sarm)
    if alt_n and ch:
        t = res["arms"][sarm]["target"]
        study = {}
        for steps in sorted((alt_n, main_n)):
            per = {}
            for s in seeds:
                c = _one(res, kind="grown", arm=sarm, seed=s, small_steps=steps, **ch)
                tgt = out["targets"][t]["final"].get(str(s))
                if c and tgt is not None:
                    per[str(s)] = _metrics(c, tgt, n, ev, small_cost(t, steps))
            study[str(steps)] = {
                "small_final": out["small"].get(str(steps), {}).get("mean"),
                "per_seed": per,
                **{
                    k: _agg([p[k] for p in per.values()])
                    for k in ("final", "speedup", "speedup_flops", "steps_to_target")
                },
            }
        out["small_length"] = {"arm": sarm, "by_small_steps": study}

    # an arm below random's final from step 0 has no steps figure, only a bound: not ranked
    ranked = [
        k
        for k, v in out["arms"].items()
        if v["speedup"]["n"] == len(seeds)
        and v["speedup"]["n"]
        and not any(p["speedup_lower_bound"] for p in v["per_seed"].values())
    ]
    if ranked:
        out["best_arm"] = max(ranked, key=lambda k: out["arms"][k]["speedup"]["mean"])
    return out


def claim(row: dict, n_seeds: int) -> str:
    sp = row["speedup"]
    if row["seeds_run"] < n_seeds:
        return f"incomplete: {row['seeds_run']} of {n_seeds} seeds were run"
    if sp["n"] < n_seeds:
        return f"none: random's final not reached in {n_seeds - sp['n']} of {n_seeds} seeds"
    if any(p["speedup_lower_bound"] for p in row["per_seed"].values()):
        return "none in steps: below random's final from step 0 (the small model alone is)"
    if sp["min"] >= 2:
        return f">= 2x on every seed (>= {sp['min']:.2f}x)"
    if sp["min"] > 1:
        return f"> 1x on every seed (>= {sp['min']:.2f}x)"
    return "none: the spread includes 1x"


# ----------------------------------------------------------------------------- tables


def _f(x, fmt: str, dash: str = "—") -> str:
    return dash if x is None else format(x, fmt)


def _ms(a: dict, fmt: str, suffix: str = "") -> str:
    """mean [min–max] over seeds."""
    if not a or a.get("mean") is None:
        return "—"
    s = f"{format(a['mean'], fmt)}{suffix}"
    if a["of"] > 1:
        s += f" [{format(a['min'], fmt)}–{format(a['max'], fmt)}]"
    if a["n"] < a["of"]:
        s += f" ({a['n']}/{a['of']} seeds)"
    return s


def tables(res: dict) -> str:
    sm = res.get("summary") or {}
    if not sm.get("arms"):
        return ""
    cfg = res["config"]
    lines = []
    n = sm["wide_steps"]
    nseeds = len(sm["seeds"])
    main_n = cfg["small_steps"]
    lines += [
        f"Seeds {', '.join(map(str, sm['seeds']))}; every figure is the mean over seeds with "
        f"[min–max] beside it. {n} steps for every large model; small model "
        f"{main_n} steps (final loss {_ms(sm['small'].get(str(main_n), {}), '.3f')}). "
        f"Device: {res['device']}.",
        "",
        "| operator | CLI growth args | params | schedule, peak LR | random init: final loss "
        "| grown: final loss | steps to random's final | speed-up | speed-up, small model's "
        "FLOPs counted | claimed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in sm["arms"].items():
        t = sm["targets"][a["target"]]
        sched = f"{a['shape']}, {_f(a['lr'], 'g')}" if a["shape"] else "—"
        lb = any(p["speedup_lower_bound"] for p in a["per_seed"].values())
        lines.append(
            f"| {name} | `{a['grow']}` | {a['params'] / 1e6:.2f} M | {sched} "
            f"| {_ms(t, '.3f')} (lr {_f(t['lr'], 'g')}) | {_ms(a['final'], '.3f')} "
            f"| {_ms(a['steps_to_target'], '.0f')} | {_ms(a['speedup'], '.2f', 'x')}"
            f"{' (≥: below at step 0)' if lb else ''} "
            f"| {_ms(a['speedup_flops'], '.2f', 'x')} | {a['claim']} |"
        )
    lines += [
        "",
        f"Speed-up = {n} / (steps the grown model needs to reach its own seed's random-init "
        "final loss and stay at or below it), evaluated every "
        f"{sm['eval_every']} steps. FLOP-counted: the small model's training is added to the "
        "grown model's steps, in FLOPs of the target. A speed-up is claimed only where every "
        f"one of the {nseeds} seeds shows it.",
    ]
    if sm.get("best_arm"):
        b = sm["best_arm"]
        lines += ["", f"Fewest steps to random's final: **{b}** ({sm['arms'][b]['claim']})."]
        bounds = [
            k
            for k, v in sm["arms"].items()
            if any(p["speedup_lower_bound"] for p in v["per_seed"].values())
        ]
        if bounds:
            lines[-1] += (
                f" Not ranked: {', '.join(bounds)}, below random's final from step 0 "
                "(at this budget their random-init control ends above the small model)."
            )
    st = sm.get("schedule_study")
    if st and st["candidates"]:
        lines += [
            "",
            f"Schedule study ({st['arm']}, seed {st['seed']}; target = random's final "
            f"{_f(st['target'], '.3f')}); winner: **{st['winner']}** (by steps to target, "
            "then final loss):",
            "",
            "| warm-up | peak LR | val loss after growth → worst after | final | steps to target "
            "| speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for c in st["candidates"].values():
            lines.append(
                f"| {c['shape']} | {c['lr']:g} | {c['step0']:.3f} → "
                f"{_f(c['peak_after_growth'], '.3f')} | {c['final']:.3f} "
                f"| {_f(c['steps_to_target'], 'd', 'never')} | {_f(c['speedup'], '.2f')}x |"
            )
    sl = sm.get("small_length")
    if sl:
        lines += [
            "",
            f"Small model trained longer ({sl['arm']}, chosen schedule, every seed):",
            "",
            "| small model steps | small final loss | grown final loss | steps to random's final "
            "| speed-up | speed-up, FLOPs counted |",
            "|---|---|---|---|---|---|",
        ]
        for steps, r in sl["by_small_steps"].items():
            lines.append(
                f"| {steps} | {_f(r['small_final'], '.3f')} | {_ms(r['final'], '.3f')} "
                f"| {_ms(r['steps_to_target'], '.0f')} | {_ms(r['speedup'], '.2f', 'x')} "
                f"| {_ms(r['speedup_flops'], '.2f', 'x')} |"
            )
    skipped = res.get("skipped_arms") or {}
    if skipped:
        lines += [""] + [f"Skipped: {k} ({v})." for k, v in skipped.items()]
    return "\n".join(lines) + "\n"
