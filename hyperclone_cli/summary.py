"""What an expansion does, in the one set of words every view uses: the `expand` table, the
model card, `inspect`'s target column and their JSON. Each view is a list of (label, value)
rows built here; a new growth option (more layers, experts) adds its row in `setting_rows`
and shows up everywhere at once."""

from __future__ import annotations

from collections.abc import Mapping

from .depth import describe
from .noise import NOISE_VERSION
from .plan import Plan
from .units import format_size

# plan.tie → words; the source's own tie reads "tied" or "not tied"
TIE_WORDS = {
    "kept": "tied (kept: final norm scaled by 1/n)",
    "untied": "untied (lm_head written)",
    "none": "not tied",
}


def tie_words(tie: str | bool | None) -> str:
    """The source's tie (a bool) or the plan's (kept / untied / none), in the same words."""
    if isinstance(tie, bool):
        return "tied" if tie else "not tied"
    return TIE_WORDS.get(tie or "", "unknown")


def dtype_words(counts: Mapping[str, int]) -> str:
    """{"float32": 272} → "float32 (272 tensors)"."""
    return ", ".join(f"{d} ({n} tensor{'s' if n != 1 else ''})" for d, n in sorted(counts.items()))


def noise_words(noise: float | None, seed: int) -> str:
    """The noise as asked for; the generator's version says which bytes a seed gives."""
    if noise is None:
        return "off (exact copies)"
    return f"SNR {noise:g} dB, seed {seed} (generator v{NOISE_VERSION})"


def setting_rows(plan: Plan) -> list[tuple[str, str]]:
    """How the target is made from the source: one row per choice the user can make."""
    r, d, s = plan.recipe, plan.dims, plan.sizes
    source_dtypes = sorted(
        {str(t.dtype).removeprefix("torch.") for t in plan.source.tensors.values()}
    )
    target = r.dtype or "/".join(source_dtypes)
    rows = [
        ("family", plan.family.name),
        ("factor", f"×{r.factor} hidden, ×{r.ffn_multiplier} ffn"),
        (
            "attention",
            f"wider heads: head_dim {d.head_dim} → {s['head_dim']} ({d.heads} heads)"
            if r.attention == "head-dim"
            else f"more heads: {d.heads} → {s['heads']} (head_dim {d.head_dim})",
        ),
        ("kv heads", f"{r.kv_heads}: {d.kv_heads} → {s['kv_heads']}"),
        ("layout", r.layout),
        ("dtype", target if r.dtype is None else f"{target} (source {'/'.join(source_dtypes)})"),
        ("noise", noise_words(r.noise, r.seed)),
        ("tied embeddings", tie_words(plan.tie)),
        # growth options beyond width (layers, experts) add their rows here
    ]
    if plan.layer_map is not None:
        rows.append(("layers", f"{d.layers} → {len(plan.layer_map)}: {describe(plan.layer_map)}"))
    if r.experts:
        arch = ", ".join(plan.config.get("architectures") or [])
        rows.append(("experts", f"upcycled into {arch}: {r.experts}, top-{r.experts_per_token}"))
    return rows


def verification_words(report: Mapping | None, enabled: bool = True) -> str:
    """`report` is a VerifyReport.to_dict(), or None when not run."""
    if report is None:
        return "not run (--no-verify)" if not enabled else "not run (dry run)"
    verdict = "pass" if report["passed"] else "FAIL"
    return (
        f"{verdict}: rel error {report['rel_error']:.3g} (tolerance {report['tolerance']:.3g}), "
        f"max |Δlogit| {report['max_abs_diff']:.3g}, top-1 {report['top1_agreement']:.4f}, "
        f"{report['mode']} mode"
    )


def result_rows(summary: Mapping) -> list[tuple[str, str]]:
    """The rows after the settings: sizes, time, verification (from ExpandResult.summary())."""
    rows = [
        ("parameters", f"{summary['source_params']:,} → {summary['target_params']:,}"),
        ("bytes", format_size(summary["target_bytes"])),
        ("shards", str(len(summary["shards"]))),
    ]
    if not summary["dry_run"]:
        rows.append(("time", f"{summary['seconds']:.1f} s on {summary['device']}"))
    rows.append(
        ("verification", verification_words(summary.get("verify"), summary["verify_enabled"]))
    )
    rows += [("note", n) for n in summary["notes"]]
    return rows
