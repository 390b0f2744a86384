"""The registry: one module per architecture family, looked up by HF class name or model_type."""

from __future__ import annotations

from ..errors import HypercloneError
from .base import IN, OUT, Dims, Family, Role
from .gemma import GEMMA, GEMMA3
from .gpt2 import GPT2
from .gpt_neox import GPT_NEOX
from .llama import LLAMA
from .olmo import OLMO, OLMO2
from .opt import OPT
from .phi3 import PHI3
from .qwen2 import QWEN2
from .qwen3 import QWEN3

FAMILIES: tuple[Family, ...] = (
    LLAMA,
    QWEN2,
    QWEN3,
    OLMO,
    OLMO2,
    GEMMA,
    GEMMA3,
    PHI3,
    OPT,
    GPT2,
    GPT_NEOX,
)


def family_for(config: dict) -> Family:
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    for fam in FAMILIES:
        if any(a in fam.architectures for a in archs):
            return fam
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    what = ", ".join(archs) if archs else f"model_type {model_type!r}"
    supported = ", ".join(a for f in FAMILIES for a in f.architectures)
    raise HypercloneError(f"config.json: unsupported architecture {what}; supported: {supported}")


__all__ = ["FAMILIES", "IN", "OUT", "Dims", "Family", "Role", "family_for"]
