"""Full verification: transformers loads each model whole, one after the other (the source
is freed before the destination loads), and both run the token batch. Also checks that a
short greedy continuation is identical (reported, not part of `passed`)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.verification import (
    VerifyReport,
    compare_logits,
    first_line,
    model_logits,
    preview,
)

GREEDY_PROMPT_TOKENS = 8
GREEDY_NEW_TOKENS = 8


def verify_full(
    src: Path,
    dst: Path,
    ids: torch.Tensor,
    tolerance: float,
    device: str,
    step: Callable[[], None] | None = None,
) -> VerifyReport:
    """Load `src`, then `dst`, with transformers and compare their logits on `ids`;
    `step()` after each decoder layer of the logits pass."""
    prompt = ids[:1, :GREEDY_PROMPT_TOKENS]
    # One model at a time: the wide model alone sets the peak, not both together.
    model, info = _load_full(src, device)
    # Extra tensors in the source are transformers' business (it ignores them); missing
    # ones would make the reference itself random.
    if info["missing"]:
        raise HypercloneError(f"source {src} is incomplete: missing {preview(info['missing'])}")
    src_logits, src_text = _logits(model, ids, step), _greedy(model, prompt)
    del model
    gc.collect()

    model, info = _load_full(dst, device)
    dst_logits, dst_text = _logits(model, ids, step), _greedy(model, prompt)
    del model
    gc.collect()

    figures = compare_logits(src_logits, dst_logits)
    ok = figures["rel_error"] <= tolerance and not info["missing"] and not info["unexpected"]
    return VerifyReport(
        **figures,
        greedy_match=torch.equal(src_text, dst_text),
        tolerance=tolerance,
        passed=ok,
        n_tokens=ids.numel(),
        mode="full",
        missing_keys=info["missing"],
        unexpected_keys=info["unexpected"],
    )


def _logits(model: nn.Module, ids: torch.Tensor, step: Callable[[], None] | None) -> torch.Tensor:
    if step is None:
        return model_logits(model, ids)
    from hyperclone_cli.verify_streamed import capture, decoder_layers

    with capture(decoder_layers(model)[0], lambda i, h: step()):
        return model_logits(model, ids)


def _load_full(path: Path, device: str) -> tuple[nn.Module, dict[str, list[str]]]:
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32, output_loading_info=True
            )
    except Exception as err:  # transformers raises many types; all mean "cannot load"
        raise HypercloneError(f"cannot load {path}: {first_line(err)}") from err
    # A weight whose shape does not fit was not loaded either: count it as missing.
    missing = set(info.get("missing_keys", ())) | {m[0] for m in info.get("mismatched_keys", ())}
    keys = {"missing": sorted(missing), "unexpected": sorted(info.get("unexpected_keys", ()))}
    return model.to(device).eval(), keys


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers: the report says it all."""
    from transformers.utils import logging

    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


@torch.no_grad()
def _greedy(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    from transformers import GenerationConfig

    # A fresh config: no eos, so both models generate exactly the same number of tokens,
    # and none of the checkpoint's sampling settings apply.
    config = GenerationConfig(
        max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    mask = torch.ones_like(prompt)
    return model.generate(prompt, attention_mask=mask, generation_config=config).cpu()
