"""EXAONE. EXAONE 3 loads as Llama but is saved under GPT-2-like names (`transformer.h.N.
attn.attention.{q,k,v,out}_proj`, `ln_1`/`ln_2`, `mlp.c_fc_0` = gate, `c_fc_1` = up,
`c_proj` = down, `transformer.wte`/`ln_f`), which transformers renames on load; the output
keeps the saved names. Its config says LlamaForCausalLM or ExaoneForCausalLM with
model_type "exaone". EXAONE 4: RMSNorms after each sublayer (as OLMo 2), per-head q/k
RMSNorms, a sliding-window pattern (masks only)."""

from __future__ import annotations

from dataclasses import replace

from .base import embedding, head, norm
from .blocks import attention, gated_mlp, mlp
from .llama import LLAMA, L

H = r"transformer\.h\.\d+\."

EXAONE = replace(
    LLAMA,
    name="exaone",
    architectures=("ExaoneForCausalLM", "LlamaForCausalLM"),  # with model_type "exaone" only
    model_types=("exaone",),
    tensors=(
        (r"transformer\.wte\.weight", embedding()),
        *attention(H, "out_proj", r"attn\.attention\."),
        *mlp(H + r"mlp\.", r"c_fc_[01]", "c_proj"),
        (H + r"ln_[12]\.weight", norm()),
        (r"transformer\.ln_f\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
    config_keys={**LLAMA.config_keys, "layers": ("num_hidden_layers", "num_layers")},
    embedding_name=r"transformer\.wte\.weight",
    tie_keepers=(r"transformer\.ln_f\.weight",),
    ignored=(),
)

EXAONE4 = replace(
    LLAMA,
    name="exaone4",
    architectures=("Exaone4ForCausalLM",),
    model_types=("exaone4",),
    tensors=(
        (r"model\.embed_tokens\.weight", embedding()),
        *attention(L),
        (L + r"self_attn\.[qk]_norm\.weight", norm("head")),
        *gated_mlp(L),
        (L + r"(post_attention|post_feedforward)_layernorm\.weight", norm()),
        (r"model\.norm\.weight", norm()),
        (r"lm_head\.weight", head()),
    ),
)
