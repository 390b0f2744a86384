"""The README.md written into every widened checkpoint: where it came from, how it was
made, how well it verified, and the sha256 of every shard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .depth import LayerMap, copy_sources
from .plan import Plan
from .summary import setting_rows, verification_words
from .writer import ShardResult

if TYPE_CHECKING:
    from .verification import VerifyReport

VERIFY_FIGURES = (
    "mode",
    "max_abs_diff",
    "rel_error",
    "kl",
    "top1_agreement",
    "tolerance",
    "passed",
)


def cell(value: object) -> str:
    """A value inside a markdown table: a bare '|' (as in max |Δlogit|) would end the cell."""
    return str(value).replace("|", "\\|")


def model_card(plan: Plan, shards: list[ShardResult], report: VerifyReport | None) -> str:
    """`report` is the VerifyReport, or None when verification was switched off."""
    prov = plan.provenance()
    n = plan.recipe.factor
    d = report.to_dict() if report is not None else None
    rows = [
        ("source", f"`{prov['source']}`"),
        ("tool", prov["tool"]),
        ("method", prov["method"]),
        *setting_rows(plan),
        ("parameters", f"{plan.target_params:,}"),
        ("bytes", f"{plan.target_bytes:,}"),
        ("verification", verification_words(d, enabled=plan.recipe.verify)),
    ]
    lines = [
        "---",
        "tags: [hyperclone, hypercloning]",
        "---",
        f"# Widened ×{n} with hyperclone",
        "",
        f"This checkpoint was made from `{prov['source']}` by {prov['tool']} with "
        "HyperCloning (Samragh et al., arXiv 2409.12903): every hidden vector is cloned "
        f"{n} times, so the model computes the same function as its source.",
        "",
        *_upcycling(plan),
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {cell(v)} |" for k, v in rows),
        "",
    ]
    if plan.layer_map is not None:
        lines += layer_section(plan.layer_map)
    if d is not None:
        lines += ["## Verification", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {d[k]} |" for k in VERIFY_FIGURES]
        lines.append("")
    else:
        lines += ["Not verified (`--no-verify`): run `hyperclone verify SRC DST`.", ""]
    lines += ["## Files", "", "| shard | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {s.file} | {s.bytes:,} | `{s.sha256}` |" for s in shards]
    for note in plan.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def layer_section(lmap: LayerMap) -> list[str]:
    """Which source layer each target layer comes from, and which are new."""
    new = sum(s is None for s in lmap)
    lines = [
        "## Layers",
        "",
        f"{new} new decoder blocks were inserted, as in LLaMA Pro (Wu et al., ACL 2024): each "
        "copies the block below it with the projections that write into the residual stream "
        "set to zero, so it starts as the identity.",
        "",
        "| target layer | source layer |",
        "|---|---|",
    ]
    for t, (s, c) in enumerate(zip(lmap, copy_sources(lmap), strict=True)):
        lines.append(f"| {t} | {s if s is not None else f'new (copy of {c})'} |")
    return [*lines, ""]


def _upcycling(plan: Plan) -> list[str]:
    """A paragraph on upcycling (`--experts`), when it was done."""
    r = plan.recipe
    if not r.experts:
        return []
    arch = ", ".join(plan.config.get("architectures") or [])
    return [
        f"It was also upcycled from a dense model into `{arch}`: {r.experts} experts, each a "
        f"copy of the dense FFN, top-{r.experts_per_token} routing with the top-k weights "
        "renormalised to sum to 1, so any routing gives the dense output; the routers start "
        f"random (seed {r.seed}) to spread tokens over the experts.",
        "",
    ]
