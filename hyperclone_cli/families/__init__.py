"""The registry: one module per architecture family, looked up by HF class name or model_type."""

from __future__ import annotations

from ..errors import HypercloneError
from .apertus import APERTUS
from .base import IN, OUT, Dims, Family, Role
from .biogpt import BIOGPT
from .bitnet import BITNET
from .bloom import BLOOM
from .cohere import COHERE
from .cpmant import CPMANT
from .deepseek import DEEPSEEK
from .diffllama import DIFFLLAMA
from .doge import DOGE
from .dory import DORY
from .exaone import EXAONE, EXAONE4
from .falcon import FALCON
from .gemma import GEMMA, GEMMA3, VAULTGEMMA
from .glm import GLM
from .gpt2 import GPT2
from .gpt_bigcode import GPT_BIGCODE
from .gpt_neo import GPT_NEO
from .gpt_neox import GPT_NEOX
from .gpt_neox_japanese import GPT_NEOX_JAPANESE
from .gptj import CODEGEN, GPTJ
from .granitemoe import GRANITEMOE
from .hunyuan import HUNYUAN_DENSE
from .jais2 import JAIS2
from .llama import LLAMA
from .llama_variants import (
    ARCEE,
    CWM,
    ERNIE4_5,
    GRANITE,
    GRANITE_SWA,
    HELIUM,
    HYPERCLOVAX,
    MINISTRAL,
    MINISTRAL3,
    SEED_OSS,
    SMOLLM3,
)
from .mixtral import MIXTRAL, PHIMOE
from .mla import MINICPM3, YOUTU
from .modernbert import MODERNBERT_DECODER
from .moshi import MOSHI
from .mpt import MPT
from .nanochat import NANOCHAT
from .nemotron import NEMOTRON
from .olmo import OLMO, OLMO2
from .openai_gpt import OPENAI_GPT
from .opt import OPT
from .persimmon import FUYU, PERSIMMON
from .phi import PHI
from .phi3 import PHI3
from .qwen2 import QWEN2
from .qwen3 import QWEN3
from .qwen_moe import OLMOE, QWEN2_MOE, QWEN3_MOE
from .refusals import refused
from .stablelm import STABLELM
from .starcoder2 import STARCODER2

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
    ARCEE,
    CWM,
    HELIUM,
    MINISTRAL,
    MINISTRAL3,
    SEED_OSS,
    SMOLLM3,
    ERNIE4_5,
    GRANITE,
    GRANITE_SWA,
    HYPERCLOVAX,
    EXAONE,
    EXAONE4,
    VAULTGEMMA,
    COHERE,
    NEMOTRON,
    APERTUS,
    BITNET,
    HUNYUAN_DENSE,
    JAIS2,
    GLM,
    DOGE,
    YOUTU,
    MINICPM3,
    DIFFLLAMA,
    DORY,
    NANOCHAT,
    MODERNBERT_DECODER,
    MOSHI,
    # GPT-style, fused and ALiBi families (issue 11)
    GPT_NEO,
    GPTJ,
    CODEGEN,
    GPT_BIGCODE,
    OPENAI_GPT,
    BIOGPT,
    PHI,
    STARCODER2,
    STABLELM,
    PERSIMMON,
    BLOOM,
    FALCON,
    MPT,
    GPT_NEOX_JAPANESE,
    CPMANT,
    FUYU,
    # mixture of experts
    MIXTRAL,
    PHIMOE,
    QWEN2_MOE,
    QWEN3_MOE,
    OLMOE,
    GRANITEMOE,
    DEEPSEEK,
)


def family_for(config: dict) -> Family:
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    for fam in FAMILIES:  # both match: EXAONE is saved as LlamaForCausalLM, model_type exaone
        if model_type in fam.model_types and any(a in fam.architectures for a in archs):
            break
    else:
        fam = next((f for f in FAMILIES if any(a in f.architectures for a in archs)), None)
    if fam is None:
        refusal = refused(archs, model_type)  # before model_type: the class names the graph
        if refusal:
            raise HypercloneError(f"config.json: {refusal}")
        fam = next((f for f in FAMILIES if model_type in f.model_types), None)
    if fam is not None:
        fam = fam.variant(config) if fam.variant else fam
        why = fam.refuse(config) if fam.refuse else None
        if why:
            name = archs[0] if archs else fam.name
            raise HypercloneError(f"config.json: {name} cannot be widened exactly: {why}")
        return fam
    what = ", ".join(archs) if archs else f"model_type {model_type!r}"
    supported = ", ".join(dict.fromkeys(a for f in FAMILIES for a in f.architectures))
    raise HypercloneError(f"config.json: unsupported architecture {what}; supported: {supported}")


def _depth_support(f: Family) -> str:
    """--add-layers: "yes", "no", or "some configs" (OPT: pre-LN ones only)."""
    writers = sum(role.writes_residual for _, role in f.tensors)
    if (
        not f.layer_index
        or writers < 2
        or f.config_path  # Fuyu: the layer count lives in a sub-config
        or (f.depth_refusal and f.depth_refusal({}))
    ):
        return "no"
    return "some configs" if f.depth_refusal else "yes"


def describe_families() -> list[dict]:
    """The registry as data: what `hyperclone families` lists."""
    return [
        {
            "family": f.name,
            "architectures": list(f.architectures),
            "model_types": list(f.model_types),
            "attention_head_dim": not f.rotary,
            "kv_heads_keep": f.supports_kv_keep,
            "tie": "kept" if f.tie_keepers else "untied",
            "add_layers": _depth_support(f),
        }
        for f in FAMILIES
    ]


__all__ = ["FAMILIES", "describe_families", "IN", "OUT", "Dims", "Family", "Role", "family_for"]
