"""Llama's tensor layout under other names, with differences that widening keeps exact. Each
entry says why; a difference that could not be kept would be refused (refusals.py).

- Arcee: a relu² MLP without gate; `(gate|up)_proj` matches up alone.
- Granite, HyperCLOVAX: `embedding_multiplier`, `residual_multiplier` and `logits_scaling`
  multiply vectors by constants that widening does not change (the embedding's stored scale
  stays 1, so a tie keeps the final norm ÷ n); `attention_multiplier` is the softmax scale of
  heads that head replication leaves unchanged. HyperCLOVAX adds peri-norms after sublayers.
- Granite SWA: learnable attention sinks, one per query head, copied with their heads.
- Ministral 3: a position-dependent query scale (llama_4_scaling_beta), the same for every head.
- SmolLM3: no RoPE in some layers; Exaone 4's sliding pattern, Cwm's and Ministral's sliding
  windows: masks, not weights. Seed-OSS: o_proj bias. Ernie 4.5: biases on every projection.
"""

from __future__ import annotations

from dataclasses import replace

from .base import Family, bias, norm
from .llama import LLAMA, L


def _variant(name: str, arch: str, **kw) -> Family:
    return replace(LLAMA, name=name, architectures=(arch,), model_types=(name,), **kw)


ARCEE = _variant("arcee", "ArceeForCausalLM")
CWM = _variant("cwm", "CwmForCausalLM")
HELIUM = _variant("helium", "HeliumForCausalLM")
MINISTRAL = _variant("ministral", "MinistralForCausalLM")
MINISTRAL3 = _variant("ministral3", "Ministral3ForCausalLM")
SEED_OSS = _variant("seed_oss", "SeedOssForCausalLM")
SMOLLM3 = _variant("smollm3", "SmolLM3ForCausalLM", default_tie=True)
ERNIE4_5 = _variant("ernie4_5", "Ernie4_5ForCausalLM", default_tie=True)
GRANITE = _variant("granite", "GraniteForCausalLM")
GRANITE_SWA = _variant(
    "granite_swa",
    "GraniteSWAForCausalLM",
    tensors=(*LLAMA.tensors, (L + r"self_attn\.sinks", bias("heads"))),
    default_tie=True,
)
HYPERCLOVAX = _variant(
    "hyperclovax",
    "HyperCLOVAXForCausalLM",
    tensors=(*LLAMA.tensors, (L + r"post_norm[12]\.weight", norm())),
)
