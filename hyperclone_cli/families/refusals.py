"""Architectures refused by name: what in each makes an exact widening impossible, or not
expressible in one plan, so that `expand` says so instead of "unsupported architecture"."""

from __future__ import annotations

REFUSED: dict[str, str] = {
    "Gemma4ForCausalLM": (
        "per-layer head sizes and key/value head counts (per_layer_config), double-wide MLPs "
        "in KV-shared layers and per-layer input embeddings; a plan has one size per space"
    ),
    "Gemma4UnifiedForCausalLM": (
        "per-layer head sizes and key/value head counts (per_layer_config) and double-wide "
        "MLPs in KV-shared layers; a plan has one size per space"
    ),
}
