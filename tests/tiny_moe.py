"""Tiny MoE models for the tests: every MoE family the installed transformers builds, 4
experts (top-2), both on-disk layouts. `save_fused` rewrites a saved checkpoint with the
fused 3-D expert tensors that transformers 5 and mergekit write."""

from __future__ import annotations

from pathlib import Path

import tiny
import transformers as T
from safetensors.torch import save_file

COMMON = dict(
    vocab_size=tiny.VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def _deepseek(cls, **kw):
    mla = dict(q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4)
    mla |= dict(v_head_dim=8, first_k_dense_replace=1, n_group=1, topk_group=1)
    return cls(**(COMMON | mla | kw))


# name → config factory (4 experts, top-2; shared experts where the family has them);
# keywords override
E4 = dict(num_experts_per_tok=2)
MOE = {
    "mixtral": lambda **kw: T.MixtralConfig(**(COMMON | E4 | dict(num_local_experts=4) | kw)),
    "qwen2_moe": lambda **kw: T.Qwen2MoeConfig(
        **(
            COMMON
            | E4
            | dict(num_experts=4, moe_intermediate_size=24, shared_expert_intermediate_size=40)
            | dict(mlp_only_layers=[1])  # one dense MLP layer of intermediate_size
            | kw
        )
    ),
    "qwen3_moe": lambda **kw: T.Qwen3MoeConfig(
        **(COMMON | E4 | dict(num_experts=4, moe_intermediate_size=24, head_dim=8) | kw)
    ),
    "olmoe": lambda **kw: T.OlmoeConfig(
        **(COMMON | E4 | dict(num_experts=4, pad_token_id=0, eos_token_id=0) | kw)
    ),
    "granitemoe": lambda **kw: T.GraniteMoeConfig(
        **(
            COMMON
            | E4
            | dict(num_local_experts=4, embedding_multiplier=2.0, logits_scaling=1.5)
            | dict(residual_multiplier=0.7, attention_multiplier=0.3)
            | kw
        )
    ),
    "granitemoeshared": lambda **kw: T.GraniteMoeSharedConfig(
        **(COMMON | E4 | dict(num_local_experts=4, shared_intermediate_size=40) | kw)
    ),
    "phimoe": lambda **kw: T.PhimoeConfig(
        **(COMMON | E4 | dict(num_local_experts=4, lm_head_bias=True) | kw)
    ),
    "deepseek_v2": lambda **kw: _deepseek(
        T.DeepseekV2Config,
        **(E4 | dict(n_routed_experts=4, moe_intermediate_size=24, n_shared_experts=2) | kw),
    ),
    "deepseek_v3": lambda **kw: _deepseek(
        T.DeepseekV3Config,
        **(E4 | dict(n_routed_experts=4, moe_intermediate_size=24, n_shared_experts=1) | kw),
    ),
}


def save_fused(path: Path) -> Path:
    """Rewrite the checkpoint at `path` with the model's own (fused 3-D) parameter names,
    which transformers loads without conversion."""
    model = tiny.load(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for f in path.glob("*.safetensors"):
        f.unlink()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
