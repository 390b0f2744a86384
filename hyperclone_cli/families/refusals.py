"""Architectures that cannot be widened exactly (or not in one plan), each with the feature
that prevents it, so that `expand` names the reason instead of "unsupported architecture".
Options of a supported family that prevent it are that family's `refuse` (see base.py)."""

from __future__ import annotations

SINUSOIDAL = (
    "sinusoidal position embeddings are computed from the hidden size, so a wider model "
    "adds different position vectors (they are not copies of the narrow ones)"
)

# Llama-like families (issue 11): HF class name → feature
REFUSED_LLAMA: dict[str, str] = {
    "Gemma4ForCausalLM": (
        "per-layer head sizes and key/value head counts (per_layer_config), double-wide MLPs "
        "in KV-shared layers and per-layer input embeddings; a plan has one size per space"
    ),
    "Gemma4UnifiedForCausalLM": (
        "per-layer head sizes and key/value head counts (per_layer_config) and double-wide "
        "MLPs in KV-shared layers; a plan has one size per space"
    ),
}

# GPT-style, fused and ALiBi families (issue 11): HF class name → feature
REFUSED_GPT: dict[str, str] = {
    "XGLMForCausalLM": SINUSOIDAL,
    "CTRLLMHeadModel": SINUSOIDAL,
}

REFUSED: dict[str, str] = {**REFUSED_LLAMA, **REFUSED_GPT}


def refused(architectures: list[str], model_type: str | None) -> str | None:
    """`<Arch> cannot be widened exactly: <feature>` for a known refusal, else None."""
    for arch in architectures:
        if arch in REFUSED:
            return f"{arch} cannot be widened exactly: {REFUSED[arch]}"
    return None
