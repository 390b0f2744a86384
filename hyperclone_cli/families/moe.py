"""Mixture-of-experts rows shared by the MoE families.

An MoE layer is a router plus E gated MLPs. Widening keeps the expert count and top-k: the
router's input (the residual stream) widens like a head's, so its logits — and the routing
— are unchanged, and it takes no noise (a rounding flip in the logits would change which
experts run). Each expert widens like a gated MLP. Experts are stored either one tensor per
expert (`experts.{e}.w1.weight`, what `save_pretrained` writes) or fused 3-D
(`experts.gate_up_proj` [E, 2I, H], `experts.down_proj` [E, H, I]); a fused tensor is a role
with a leading "fixed" expert axis, and clone.py chunks along axis 0 — one or more whole
experts at a time, so the largest tensor of the model never sits in memory twice.
"""

from __future__ import annotations

import re

from .base import IN, OUT, Role, Space, linear
from .blocks import Rows


def router(name: str) -> Rows:
    """(E, hidden) router or (1, hidden) sigmoid gate: input side only, never noised."""
    return ((name, Role((("fixed", OUT), ("hidden", IN)), noisy=False)),)


def fused_experts(gate_up: str, down: str, space: Space = "ffn") -> Rows:
    """3-D experts: gate_up [E, 2I, H] rows `[gate | up]`, down [E, H, I]."""
    return (
        (gate_up, Role((("fixed", OUT), ((space, space), OUT), ("hidden", IN)))),
        (down, Role((("fixed", OUT), ("hidden", OUT), (space, IN)))),
    )


def experts(prefix: str, up: str, down: str, space: Space = "ffn") -> Rows:
    """Experts in both layouts under `prefix` (…`experts.`): per expert `{e}.{up}.weight`
    and `{e}.{down}.weight`, or the fused `gate_up_proj` / `down_proj`."""
    return (
        (rf"{prefix}\d+\.{up}\.weight", linear(space, "hidden")),
        (rf"{prefix}\d+\.{down}\.weight", linear("hidden", space)),
        *fused_experts(prefix + "gate_up_proj", prefix + "down_proj", space),
    )


# config.json keys of the expert count, top-k and shared experts, across the families
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
TOP_K_KEYS = ("num_experts_per_tok", "top_k", "moe_topk")
SHARED_KEYS = ("n_shared_experts", "shared_expert_intermediate_size", "shared_intermediate_size")


def moe_summary(cfg: dict) -> dict | None:
    """Experts, top-k and shared experts of an MoE config.json (None for a dense one)."""
    experts_ = next((cfg[k] for k in EXPERT_KEYS if cfg.get(k)), None)
    if not experts_:
        return None
    top_k = next((cfg[k] for k in TOP_K_KEYS if cfg.get(k)), None)
    shared = 0
    if cfg.get("n_shared_experts"):
        shared = cfg["n_shared_experts"]
    elif cfg.get("shared_expert_intermediate_size") or cfg.get("shared_intermediate_size"):
        shared = 1
    return {"experts": experts_, "top_k": top_k, "shared_experts": shared}


# routed-expert tensors, in both layouts (shared experts are always active: not matched)
ROUTED = re.compile(
    r".*(\.experts\.(\d+\.|gate_up_proj|down_proj)|block_sparse_moe\.(input|output)_linear)"
)


def moe_figures(cfg: dict, numels: dict[str, int]) -> dict | None:
    """Experts, top-k, shared experts and parameters active per token, from config.json and
    each tensor's element count; None for a dense model."""
    summary = moe_summary(cfg)
    if summary is None:
        return None
    routed = sum(n for name, n in numels.items() if ROUTED.search(name))
    total = sum(numels.values())
    k, e = summary["top_k"] or summary["experts"], summary["experts"]
    return summary | {"active_params": total - routed + routed * k // e}
