"""Tiny models built with transformers config classes, weights spread wide so that a wrong
scale or a misplaced block shows in the logits. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

VOCAB = 96


def spread(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm gains away from 1, biases away from 0, weights with a healthy spread."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * r)
            elif name.endswith("bias"):
                p.copy_(0.3 * r)
            elif p.dim() == 2:
                p.copy_(r * (1.5 / p.shape[1] ** 0.5) if "embed" not in name else r)
    return model.eval()


def llama_config(**kw) -> LlamaConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    base.update(kw)
    return LlamaConfig(**base)


def opt_config(**kw) -> OPTConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        do_layer_norm_before=True,
        dropout=0.0,
    )
    base.update(kw)
    return OPTConfig(**base)


def mild(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """transformers' own init scaled 1–5× per tensor, norms in [0.5, 2): logits of a size
    that half precision rounds the way it rounds real models'."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.5)
            else:
                p.mul_(torch.rand((), generator=g) * 4 + 1)
    return model.eval()


def save(
    config,
    path: Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weights=spread,
    **save_kw,
) -> Path:
    """Build the model of `config`, set its weights with `weights` (`spread` or `mild`), save."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    weights(model, seed)
    model.to(dtype).save_pretrained(path, **save_kw)
    return path


def load(path: Path) -> torch.nn.Module:
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    return model.eval()


def tokens(batch: int = 2, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits
