"""Architectures that cannot be widened exactly, each with the feature that prevents it, so
that `expand` names the reason instead of "unsupported architecture". Options of a
supported family that prevent it are that family's `refuse` (see base.py)."""

from __future__ import annotations

SINUSOIDAL = (
    "sinusoidal position embeddings are computed from the hidden size, so a wider model "
    "adds different position vectors (they are not copies of the narrow ones)"
)

# GPT-style, fused and ALiBi families (issue 11): HF class name → feature
REFUSED_GPT: dict[str, str] = {
    "XGLMForCausalLM": SINUSOIDAL,
    "CTRLLMHeadModel": SINUSOIDAL,
}

REFUSED: dict[str, str] = {**REFUSED_GPT}


def refused(architectures: list[str], model_type: str | None) -> str | None:
    """`<Arch> cannot be widened exactly: <feature>` for a known refusal, else None."""
    for arch in architectures:
        if arch in REFUSED:
            return f"{arch} cannot be widened exactly: {REFUSED[arch]}"
    return None
