"""ModernBERT decoder: q/k/v and `Wo` under `attn.`, a fused `Wi` whose rows are
`[input | gate]` (chunk(2)), LayerNorms (bias optional) on the embedding, before each
sublayer and at the end, and a prediction head `lm_head.dense` → act → `lm_head.norm` before
the tied `decoder`. A tie is kept by scaling the head's LayerNorm by 1/n. No GQA: the model
has one head count, so --kv-heads keep is refused."""

from __future__ import annotations

from dataclasses import replace

from .base import bias, embedding, fixed, head, linear, norm
from .blocks import attention, mlp
from .llama import LLAMA

L = r"model\.layers\.\d+\."
LN = r"(model\.embeddings\.norm|model\.final_norm|lm_head\.norm|" + L + r"(attn|mlp)_norm)"

MODERNBERT_DECODER = replace(
    LLAMA,
    name="modernbert-decoder",
    architectures=("ModernBertDecoderForCausalLM",),
    model_types=("modernbert-decoder",),
    tensors=(
        (r"model\.embeddings\.tok_embeddings\.weight", embedding()),
        *attention(L, "Wo", r"attn\."),
        *mlp(L + r"mlp\.", "Wi", "Wo", up_space=("ffn", "ffn")),
        (LN + r"\.weight", norm()),
        (LN + r"\.bias", bias("hidden")),
        (r"lm_head\.dense\.weight", linear("hidden", "hidden")),
        (r"lm_head\.dense\.bias", bias("hidden")),
        (r"decoder\.weight", head()),
        (r"decoder\.bias", fixed(1)),
    ),
    config_keys={k: v for k, v in LLAMA.config_keys.items() if k not in ("kv_heads", "head_dim")},
    embedding_name=r"model\.embeddings\.tok_embeddings\.weight",
    head_name="decoder.weight",
    tie_keepers=(r"lm_head\.norm\.(weight|bias)",),
    default_tie=True,
    supports_kv_keep=False,
)
