"""The README.md written into every widened checkpoint: where it came from, how it was
made, how well it verified, and the sha256 of every shard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .plan import Plan
from .writer import ShardResult

if TYPE_CHECKING:
    from .verify import VerifyReport


def model_card(plan: Plan, shards: list[ShardResult], report: VerifyReport | None) -> str:
    """`report` is the VerifyReport, or None when verification was switched off."""
    prov = plan.provenance()
    lines = [
        "---",
        "tags: [hyperclone, hypercloning]",
        "---",
        f"# Widened ×{plan.recipe.factor} with hyperclone",
        "",
        f"This checkpoint was made from `{prov['source']}` by {prov['tool']} with "
        "HyperCloning (Samragh et al., arXiv 2409.12903): every hidden vector is cloned "
        f"{plan.recipe.factor} times, so the model computes the same function as its source.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in prov.items()]
    lines += [
        f"| parameters | {plan.target_params:,} |",
        f"| bytes | {plan.target_bytes:,} |",
        "",
    ]
    if report is not None:
        d = report.to_dict()
        lines += ["## Verification", "", "| figure | value |", "|---|---|"]
        shown = ("mode", "max_abs_diff", "rel_error", "kl", "top1_agreement", "tolerance", "passed")
        lines += [f"| {k} | {v} |" for k, v in d.items() if k in shown]
        lines.append("")
    else:
        lines += ["Not verified (`--no-verify`).", ""]
    lines += ["## Files", "", "| shard | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {s.file} | {s.bytes:,} | `{s.sha256}` |" for s in shards]
    for note in plan.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"
