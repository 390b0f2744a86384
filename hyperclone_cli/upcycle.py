"""Upcycling: a dense model becomes the mixture-of-experts family that matches it, every
expert a copy of the dense FFN (`--experts E --top-k K`, with or without widening).

Why it is exact: with identical experts f, a router whose top-k weights are renormalised to
sum to 1 gives Σ wᵢ f(x) = f(x) for any routing, so the router can start random (seeded,
small: tokens spread over the experts, and routing breaks the experts' symmetry in training)
while the function is kept. Each family's renormalisation switch (`norm_topk_prob`) is set;
Mixtral always renormalises. A shared expert (Qwen2-MoE) gets the dense FFN's gate/up and
a zero down projection, so it adds nothing until trained.

The MoE config class has defaults of its own (MixtralConfig: rope_theta 1e6, rms_norm_eps
1e-5 where LlamaConfig has 1e4, 1e-6), so every setting that affects the function is read
from the dense config *as transformers resolves it* and written explicitly; a setting the
MoE family cannot express is refused by name.

This rewrites a dense plan (plan.py) in place: the FFN tensors become E expert tensors (one
source tensor → several targets), plus generated routers, and config.json becomes the MoE's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .clone import AxisMap, identity_map
from .errors import HypercloneError
from .families.moe import moe_summary

if TYPE_CHECKING:
    from .plan import Plan, TensorPlan

L = "model.layers.{l}."


@dataclass(frozen=True)
class Target:
    """How one dense family is written as its MoE family."""

    model_type: str
    architecture: str
    experts_key: str
    expert: dict[str, str]  # dense projection → per-expert name ({l}, {e})
    router: str  # ({l})
    carried: tuple[str, ...] = ()  # more dense keys the MoE class reads (beyond COMMON)
    moe_keys: dict = field(default_factory=dict)  # fixed settings (routing renormalised…)
    ffn_keys: tuple[str, ...] = ()  # MoE keys set to the (widened) dense FFN size
    shared: str | None = None  # shared expert prefix ({l}), zero down projection
    shared_gate: str | None = None  # its sigmoid gate ({l}), zero


# Read from the dense config (as transformers resolves it) and written explicitly.
COMMON = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "attention_dropout",
    "initializer_range",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
)
# Dense settings that change the function when on: each must be carried or refused.
SWITCHES = ("attention_bias", "mlp_bias", "sliding_window", "head_dim")
OFF = (None, False, 0)

MIXTRAL = Target(
    model_type="mixtral",
    architecture="MixtralForCausalLM",
    experts_key="num_local_experts",
    expert={
        p: L + "block_sparse_moe.experts.{e}." + w + ".weight"
        for p, w in (("gate", "w1"), ("up", "w3"), ("down", "w2"))
    },
    router=L + "block_sparse_moe.gate.weight",
    carried=("sliding_window", "head_dim"),
)
_QWEN_EXPERT = {p: L + "mlp.experts.{e}." + p + "_proj.weight" for p in ("gate", "up", "down")}
QWEN2_MOE = Target(
    model_type="qwen2_moe",
    architecture="Qwen2MoeForCausalLM",
    experts_key="num_experts",
    expert=_QWEN_EXPERT,
    router=L + "mlp.gate.weight",
    carried=(
        "sliding_window",
        "use_sliding_window",
        "max_window_layers",
        "layer_types",
        "head_dim",
    ),
    moe_keys={
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "qkv_bias": True,
    },
    ffn_keys=("moe_intermediate_size", "shared_expert_intermediate_size"),
    shared=L + "mlp.shared_expert.",
    shared_gate=L + "mlp.shared_expert_gate.weight",
)
QWEN3_MOE = Target(
    model_type="qwen3_moe",
    architecture="Qwen3MoeForCausalLM",
    experts_key="num_experts",
    expert=_QWEN_EXPERT,
    router=L + "mlp.gate.weight",
    carried=("attention_bias", "head_dim", "use_sliding_window", "sliding_window"),
    moe_keys={"norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []},
    ffn_keys=("moe_intermediate_size",),
)

TARGETS = {"llama": MIXTRAL, "mistral": MIXTRAL, "qwen2": QWEN2_MOE, "qwen3": QWEN3_MOE}
REFUSED = {
    "olmo2": "OLMoE normalises before each sublayer, OLMo 2 after it: the blocks differ",
    "olmo3": "OLMoE normalises before each sublayer, OLMo 3 after it: the blocks differ",
    "olmo": "OLMoE has RMSNorms with gains and q/k norms, OLMo's LayerNorm has no parameters",
}

DENSE_FFN = re.compile(r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)")


def target_for(config: dict) -> Target:
    mt = config.get("model_type")
    if mt in TARGETS:
        return TARGETS[mt]
    if mt in REFUSED:
        why = REFUSED[mt]
    elif moe_summary(config):
        why = "it is already a mixture of experts; widen it with --factor alone"
    else:
        why = "transformers has no mixture-of-experts family with its blocks"
    supported = "Llama/Mistral → Mixtral, Qwen2 → Qwen2-MoE, Qwen3 → Qwen3-MoE"
    raise HypercloneError(
        f"--experts: cannot upcycle model_type {mt!r} ({why}); supported: {supported}"
    )


def moe_config(dense_cfg: dict, target: Target, experts: int, top_k: int) -> dict:
    """The MoE config.json for a (widened) dense config.json: every setting that affects the
    function carried explicitly, checked against what the MoE class makes of it."""
    from transformers import CONFIG_MAPPING

    dense = CONFIG_MAPPING[dense_cfg["model_type"]].from_dict(dense_cfg)
    for key in SWITCHES:
        value = getattr(dense, key, None)
        if value not in OFF and key not in target.carried:
            raise HypercloneError(
                f"config.json: {key} = {value!r} cannot be expressed by {target.architecture}; "
                "upcycling would change the function"
            )
    layer_types = getattr(dense, "layer_types", None) or []
    if "layer_types" not in target.carried and any(t != "full_attention" for t in layer_types):
        raise HypercloneError(
            f"config.json: per-layer attention types {sorted(set(layer_types))} cannot be "
            f"expressed by {target.architecture}; upcycling would change the function"
        )
    values = {k: getattr(dense, k) for k in (*COMMON, *target.carried) if hasattr(dense, k)}
    ffn = dense.intermediate_size
    values |= target.moe_keys | {k: ffn for k in target.ffn_keys}
    values |= {target.experts_key: experts, "num_experts_per_tok": top_k}
    moe = CONFIG_MAPPING[target.model_type](**values)
    for key, want in values.items():
        got = getattr(moe, key, None)
        if got != want and not (got in OFF and want in OFF):
            raise HypercloneError(
                f"config.json: {key} = {want!r} becomes {got!r} in {target.architecture}; "
                "upcycling would change the function"
            )
    out = moe.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        out.pop(key, None)
    out["architectures"] = [target.architecture]
    for key in ("dtype", "torch_dtype"):
        if key in dense_cfg:
            out[key] = dense_cfg[key]
    return out


def upcycle(plan: Plan) -> None:
    """Rewrite a dense plan as the matching MoE: experts, routers, config.json."""
    recipe = plan.recipe
    experts, top_k = recipe.experts, recipe.experts_per_token
    target = target_for(plan.source.config)
    plan.config = moe_config(plan.config, target, experts, top_k)
    std = plan.config.get("initializer_range") or 0.02
    tensors: list[TensorPlan] = []
    for t in plan.tensors:
        m = DENSE_FFN.fullmatch(t.name)
        if m is None:
            tensors.append(t)
            continue
        layer, proj, kind = m.groups()
        if kind == "bias":
            raise HypercloneError(
                f"tensor {t.name}: {target.architecture} experts have no biases; "
                "upcycling would change the function"
            )
        tensors += [
            replace(t, name=target.expert[proj].format(l=layer, e=e)) for e in range(experts)
        ]
        if target.shared:
            name = target.shared.format(l=layer) + f"{proj}_proj.weight"
            # the shared expert adds nothing until trained: its down projection is zero
            tensors.append(
                _generated(t, name, t.shape, "zeros") if proj == "down" else replace(t, name=name)
            )
        if proj == "down":  # one router (and shared gate) per layer, after its experts
            hidden = t.shape[0]
            tensors.append(
                _generated(t, target.router.format(l=layer), (experts, hidden), "normal", std)
            )
            if target.shared_gate:
                tensors.append(
                    _generated(t, target.shared_gate.format(l=layer), (1, hidden), "zeros")
                )
    plan.tensors = tensors
    plan.notes.append(
        f"upcycled to {target.architecture}: {experts} experts (copies of the dense FFN), "
        f"top-{top_k}, routers random (seeded, std {std:g}), top-k weights renormalised"
    )


def _generated(like: TensorPlan, name: str, shape: tuple[int, ...], init: str, std: float = 0.0):
    axes = tuple(AxisMap(identity_map(s), s, "out") for s in shape)
    return replace(
        like,
        name=name,
        axes=axes,
        scale=1.0,
        noise=False,
        diagonal=False,
        zero=False,
        block_noise=False,
        init=(init, std),
    )
