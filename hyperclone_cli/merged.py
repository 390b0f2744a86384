"""Tensors that transformers merges on load, read as the parameter they become.

MoE checkpoints store experts one tensor per expert (`experts.{e}.w1.weight`), which
transformers 5 stacks into one fused parameter (`experts.gate_up_proj` [E, 2I, H]) with a
WeightConverter: MergeModulelist (stack the experts) and, for gate/up, Concatenate (the
source patterns side by side). Streamed verify reads a module's own parameters just before
it runs; for a merged one it reads its per-expert tensors and applies the same two ops.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Merged:
    """A parameter made of several stored tensors: per source pattern, the stored names in
    expert order, stacked along `stack_dim`; the patterns then concatenated along `cat_dim`."""

    parts: tuple[tuple[str, ...], ...]
    stack_dim: int
    cat_dim: int | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for keys in self.parts for k in keys)

    def read(self, read_one: Callable[[str], torch.Tensor]) -> torch.Tensor:
        stacked = [
            torch.stack([read_one(k) for k in keys], dim=self.stack_dim) for keys in self.parts
        ]
        return torch.cat(stacked, dim=self.cat_dim) if self.cat_dim is not None else stacked[0]


def merge_plan(matches: list[tuple[str, str, str]], converters: list) -> dict[str, Merged] | None:
    """`matches`: (stored name, target parameter name, converter source pattern) for every
    stored tensor a converter claims. Returns target name → Merged, or None when a converter
    does anything but stack experts (and concatenate patterns)."""
    from transformers.core_model_loading import Concatenate, MergeModulelist

    groups: dict[str, dict[str, list[tuple[int, str]]]] = {}
    owner: dict[str, object] = {}
    for key, target, pattern in matches:
        conv = next((c for c in converters if pattern in c.source_patterns), None)
        if conv is None:
            return None
        expert = re.search(re.escape(pattern).replace(r"\*", r"(\d+)"), key)
        if expert is None:
            return None
        groups.setdefault(target, {}).setdefault(pattern, []).append((int(expert.group(1)), key))
        owner[target] = conv
    plan = {}
    for target, by_pattern in groups.items():
        ops = list(owner[target].operations)
        if not ops or not isinstance(ops[0], MergeModulelist):
            return None
        if len(ops) > 2 or (len(ops) == 2 and not isinstance(ops[1], Concatenate)):
            return None
        patterns = [p for p in owner[target].source_patterns if p in by_pattern]
        parts = tuple(tuple(k for _, k in sorted(by_pattern[p])) for p in patterns)
        plan[target] = Merged(parts, ops[0].dim, ops[1].dim if len(ops) == 2 else None)
    return plan
