"""Check that a widened checkpoint computes the same function as its source.

Both checkpoints run the same deterministic token batch in float32 and their logits are
compared: max |Δlogit|, the same relative to max |logit|, KL(p_src || p_dst) per token and
top-1 agreement. Comparing logits (not only generated text) is what catches a head that
lost its 1/n: such a model still generates the same greedy text with logits n× too large.

Two ways to run the models:

- **full**: `transformers.AutoModelForCausalLM.from_pretrained` loads each model whole, one
  after the other (the source is freed before the destination loads). Also checks that a
  short greedy continuation is identical (reported, not part of `passed`).
- **streamed**: for checkpoints larger than memory. Each model is built with its parameters
  on the meta device; forward hooks read a module's own tensors from disk just before the
  module runs and drop them right after, so peak memory is about the largest single weight
  (typically the embedding or lm_head) plus activations. Forward hooks on the decoder
  layers compare each layer's output of the wide model with the n-fold clone of the
  source's, which names the first layer that diverges.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn

from hyperclone_cli.errors import HypercloneError, VerificationError
from hyperclone_cli.merged import Merged, merge_plan

# Default tolerances on the relative logit error, by the destination's stored dtype.
# Measured on tiny and 6-layer Llamas widened x2 (rel error = max |Δlogit| / max |logit|):
# - float32, exact or with symmetric noise: ~1e-6 (summation order only).
# - bfloat16: 2e-3 - 4e-3 with noise (W/n ± η no longer cancel after rounding), up to 8e-3
#   for an fp32 source stored as bf16; float16: below 1e-3.
# - wrong widenings: a lost or doubled 1/n gives 1.0, noise that does not cancel 0.5 - 0.6.
# 3e-2 sits between the two for any weight narrower than 32 bits.
TOLERANCE_FP32 = 1e-4
TOLERANCE_HALF = 3e-2

# Stream automatically when both models in float32 would take more than this share of
# the memory available now.
STREAM_MEMORY_FRACTION = 0.6

GREEDY_PROMPT_TOKENS = 8
GREEDY_NEW_TOKENS = 8


@dataclass
class LayerCheck:
    """One decoder layer of the wide model against the n-fold clone of the source's."""

    index: int
    max_abs_diff: float
    rel_error: float
    passed: bool


@dataclass
class VerifyReport:
    max_abs_diff: float  # max |logit_src - logit_dst| over the batch
    rel_error: float  # max_abs_diff / max |logit_src|
    kl: float  # mean KL(p_src || p_dst) per token
    top1_agreement: float  # fraction of positions with the same argmax
    greedy_match: bool | None  # None in streamed mode (no generation there)
    tolerance: float
    passed: bool
    n_tokens: int
    mode: str  # "full" or "streamed"
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    layers: list[LayerCheck] = field(default_factory=list)  # streamed mode only
    first_bad_layer: int | None = None
    layer_prefix: str | None = None  # e.g. "model.layers", to name a bad layer's weights

    def summary(self) -> str:
        """One line: the figures if it passed, otherwise the first reason it failed."""
        figures = (
            f"max |Δlogit| {self.max_abs_diff:.3g}, rel error {self.rel_error:.3g} "
            f"(tolerance {self.tolerance:g}), KL {self.kl:.3g}, "
            f"top-1 agreement {self.top1_agreement:.1%} over {self.n_tokens} tokens"
        )
        if self.passed:
            return f"match: {figures}"
        if self.missing_keys or self.unexpected_keys:
            parts = []
            if self.missing_keys:
                parts.append(f"missing {_preview(self.missing_keys)}")
            if self.unexpected_keys:
                parts.append(f"unexpected {_preview(self.unexpected_keys)}")
            return f"destination weights do not fit its architecture: {'; '.join(parts)}"
        if self.first_bad_layer is not None:
            bad = self.layers[self.first_bad_layer]
            where = f": {self.layer_prefix}.{bad.index}.*" if self.layer_prefix else ""
            return (
                f"layer {bad.index} diverged (rel error {bad.rel_error:.3g}){where}; "
                f"logits: {figures}"
            )
        if self.layers:
            # Every layer matched, so the error is after the last one.
            return (
                "logits differ though every decoder layer matches "
                f"(check the final norm and lm_head): {figures}"
            )
        return f"logits differ: {figures}"

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    def raise_if_failed(self, then: str = "") -> None:
        """Raise VerificationError with the summary; `then` says what the caller did about it."""
        if not self.passed:
            raise VerificationError(f"verification failed: {self.summary()}{then}", report=self)


def verify(
    src: str | Path,
    dst: str | Path,
    *,
    tolerance: float | None = None,
    streamed: bool | None = None,
    batch_size: int = 2,
    seq_len: int = 32,
    seed: int = 0,
    device: str = "cpu",
) -> VerifyReport:
    """Run one token batch through `src` and its widened `dst`; compare the logits.

    `tolerance` bounds the relative logit error (max |Δlogit| / max |logit_src|); by default
    it follows the destination's stored dtype: `TOLERANCE_FP32` (1e-4) for float32,
    `TOLERANCE_HALF` (3e-2) for bfloat16/float16 (see the constants for why).
    `streamed=None` streams when the two models in float32 exceed 60% of available RAM.
    `passed` requires the error within tolerance and no missing or unexpected weights in
    `dst`; the greedy check and the per-layer checks are diagnostics.

    Raises `HypercloneError` when a checkpoint cannot be loaded, when the source itself
    misses weights, or when streamed mode meets a layout it cannot read tensor by tensor
    (checkpoints whose tensors transformers merges on load, such as per-expert MoE files).
    """
    src, dst = Path(src), Path(dst)
    src_config, dst_config = _load_config(src), _load_config(dst)
    if tolerance is None:
        tolerance = default_tolerance(dst)
    src_meta, dst_meta = _empty_model(src, src_config), _empty_model(dst, dst_config)
    if streamed is None:
        need = 4 * (_count_parameters(src_meta) + _count_parameters(dst_meta))
        streamed = need > STREAM_MEMORY_FRACTION * psutil.virtual_memory().available

    vocab = min(_text_config(src_config).vocab_size, _text_config(dst_config).vocab_size)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device)

    if streamed:
        return _verify_streamed(src, dst, src_meta, dst_meta, ids, tolerance, device)
    del src_meta, dst_meta
    return _verify_full(src, dst, ids, tolerance, device)


def default_tolerance(path: str | Path) -> float:
    """The relative logit tolerance for a checkpoint stored as `stored_dtype(path)`."""
    return TOLERANCE_FP32 if stored_dtype(path).itemsize >= 4 else TOLERANCE_HALF


def stored_dtype(path: str | Path) -> torch.dtype:
    """The narrowest floating dtype of the weights on disk (safetensors headers), else the
    config's `dtype`/`torch_dtype`, else float32."""
    path = Path(path)
    found: set[torch.dtype] = set()
    for file in _checkpoint_files(path):
        if file.suffix == ".safetensors":
            for entry in _safetensors_header(file).values():
                if entry["dtype"] in _SAFETENSORS_FLOATS:
                    found.add(_SAFETENSORS_FLOATS[entry["dtype"]])
    if found:
        return min(found, key=lambda d: d.itemsize)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
            return getattr(torch, value)
    return torch.float32


# --- full mode -------------------------------------------------------------------------


def _verify_full(
    src: Path, dst: Path, ids: torch.Tensor, tolerance: float, device: str
) -> VerifyReport:
    prompt = ids[:1, :GREEDY_PROMPT_TOKENS]
    # One model at a time: the wide model alone sets the peak, not both together.
    model, info = _load_full(src, device)
    # Extra tensors in the source are transformers' business (it ignores them); missing
    # ones would make the reference itself random.
    if info["missing"]:
        raise HypercloneError(f"source {src} is incomplete: missing {_preview(info['missing'])}")
    src_logits, src_text = _logits(model, ids), _greedy(model, prompt)
    del model
    gc.collect()

    model, info = _load_full(dst, device)
    dst_logits, dst_text = _logits(model, ids), _greedy(model, prompt)
    del model
    gc.collect()

    figures = _compare_logits(src_logits, dst_logits)
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


def _load_full(path: Path, device: str) -> tuple[nn.Module, dict[str, list[str]]]:
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32, output_loading_info=True
            )
    except Exception as err:  # transformers raises many types; all mean "cannot load"
        raise HypercloneError(f"cannot load {path}: {_first_line(err)}") from err
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


# --- streamed mode ---------------------------------------------------------------------


def _verify_streamed(
    src: Path,
    dst: Path,
    src_model: nn.Module,
    dst_model: nn.Module,
    ids: torch.Tensor,
    tolerance: float,
    device: str,
) -> VerifyReport:
    src_layers, prefix = _decoder_layers(src_model)
    dst_layers, _ = _decoder_layers(dst_model)
    if len(src_layers) != len(dst_layers):
        raise HypercloneError(
            f"{dst} has {len(dst_layers)} decoder layers and {src} has {len(src_layers)}: "
            "not a widening of it"
        )

    # Source first: keep each layer's output (batch × seq × d, small), then compare the
    # wide model's layers with their clones as they come and keep only the figures.
    missing, _ = _stream_weights(src, src_model, device)
    if missing:
        raise HypercloneError(f"source {src} is incomplete: missing {_preview(missing)}")
    src_outputs: list[torch.Tensor] = []
    src_logits = _run_streamed(src_model, ids, src_layers, lambda i, h: src_outputs.append(h))

    checks: list[LayerCheck] = []

    def check(i: int, h_dst: torch.Tensor) -> None:
        h_src = src_outputs[i]
        n, rest = divmod(h_dst.shape[-1], h_src.shape[-1])
        if rest or h_dst.shape[:-1] != h_src.shape[:-1]:
            checks.append(LayerCheck(i, float("inf"), float("inf"), False))
            return
        diff = (h_dst - torch.cat([h_src] * n, dim=-1)).abs().max().item()
        rel = diff / max(h_src.abs().max().item(), torch.finfo(torch.float32).tiny)
        checks.append(LayerCheck(i, diff, rel, rel <= tolerance))

    missing, unexpected = _stream_weights(dst, dst_model, device)
    dst_logits = _run_streamed(dst_model, ids, dst_layers, check)

    figures = _compare_logits(src_logits, dst_logits)
    ok = figures["rel_error"] <= tolerance and not missing and not unexpected
    return VerifyReport(
        **figures,
        greedy_match=None,
        tolerance=tolerance,
        passed=ok,
        n_tokens=ids.numel(),
        mode="streamed",
        missing_keys=missing,
        unexpected_keys=unexpected,
        layers=checks,
        first_bad_layer=next((c.index for c in checks if not c.passed), None),
        layer_prefix=prefix,
    )


def _run_streamed(
    model: nn.Module,
    ids: torch.Tensor,
    layers: list[nn.Module],
    sink: Callable[[int, torch.Tensor], None],
) -> torch.Tensor:
    try:
        with _capture(layers, sink):
            return _logits(model, ids)
    except (RuntimeError, NotImplementedError) as err:
        if "meta" not in str(err):
            raise
        # Some module used a weight it does not own, so no hook loaded it.
        raise HypercloneError(
            f"streamed verify cannot run {type(model).__name__} ({_first_line(err)}); use full mode"
        ) from err


def _stream_weights(path: Path, model: nn.Module, device: str) -> tuple[list[str], list[str]]:
    """Install hooks so that each module of `model` (parameters on meta) reads its own
    tensors from `path` when it runs and frees them after. Returns (missing, unexpected).

    Missing weights are zero-filled so the forward pass still runs; the report fails anyway.
    """
    on_disk = _tensor_files(path)
    stored_as = _stored_names(model, on_disk, path)
    used: set[str] = set()
    # Tied parameters are one Parameter object under several names (e.g. lm_head.weight
    # and model.embed_tokens.weight); any of its names present on disk will do.
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)

    missing: list[str] = []
    plan: dict[nn.Module, dict[str, str | None]] = {}
    for module_name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        plan[module] = {}
        for short, param in own.items():
            full = f"{module_name}.{short}" if module_name else short
            found = stored_as.get(full)
            if found is None:
                found = next(filter(None, map(stored_as.get, aliases[id(param)])), None)
            if found is None:
                missing.append(full)
            else:
                used.update(found.names if isinstance(found, Merged) else [found])
            plan[module][short] = found

    # Persistent buffers (rare in causal LMs) are small: load the ones on disk once.
    for name, buffer in list(model.named_buffers()):
        found = stored_as.get(name)
        owner_name, _, short = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if found is not None:
            used.add(found)
            value = _read(on_disk, [found])[found].to(device=device, dtype=buffer.dtype)
        else:
            value = buffer.to(device)
        owner._buffers[short] = value

    for module, names in plan.items():
        placeholders = {short: module._parameters[short] for short in names}

        def materialize(mod: nn.Module, args: object, names=names, placeholders=placeholders):
            tensors = _read(on_disk, [k for n in names.values() for k in _stored(n)])
            for short, found in names.items():
                meta = placeholders[short]
                if found is None:
                    value = torch.zeros(meta.shape, dtype=meta.dtype, device=device)
                else:
                    value = (
                        found.read(tensors.pop) if isinstance(found, Merged) else tensors.pop(found)
                    )
                    if tuple(value.shape) != tuple(meta.shape):
                        raise HypercloneError(
                            f"cannot load {path}: {found} has shape {tuple(value.shape)}, "
                            f"the config implies {tuple(meta.shape)}"
                        )
                    value = value.to(device=device, dtype=meta.dtype)
                mod._parameters[short] = nn.Parameter(value, requires_grad=False)

        def release(mod: nn.Module, args: object, out: object, placeholders=placeholders):
            mod._parameters.update(placeholders)

        module.register_forward_pre_hook(materialize)
        module.register_forward_hook(release)

    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", ()) or ()]
    unexpected = [k for k in on_disk if k not in used and not any(p.search(k) for p in ignore)]
    return sorted(missing), sorted(unexpected)


def _stored_names(
    model: nn.Module, on_disk: dict[str, Path], path: Path
) -> dict[str, str | Merged]:
    """Model tensor name → its name on disk.

    transformers renames some tensors on load (Pythia's `embed_out` → `lm_head`, legacy
    `gamma`/`beta`, a missing or extra base-model prefix): apply its own rules. Tensors that
    it merges on load (MoE experts stored one by one) are read as the merged parameter.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:  # transformers 4.x: names as stored, or without the base-model prefix
        expected = set(model.state_dict())
        prefixed = {f"{model.base_model_prefix}.{k}": k for k in on_disk}
        return {**{k: k for k in on_disk}, **{n: k for n, k in prefixed.items() if n in expected}}

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    expected = model.state_dict()
    names: dict[str, str | Merged] = {}
    matches = []  # tensors a converter merges on load (MoE experts stored one by one)
    for key in on_disk:
        name, merged = rename_source_key(
            key, renamings, converters, model.base_model_prefix, expected
        )
        if merged is not None:
            matches.append((key, name, merged))
        else:
            names[name] = key
    if matches:
        plan = merge_plan(matches, converters)
        if plan is None:
            raise HypercloneError(
                f"streamed verify cannot read {path}: transformers merges tensors such as "
                f"{matches[0][0]} when loading {type(model).__name__}; use full mode"
            )
        names.update(plan)
    return names


def _stored(found: str | Merged | None) -> tuple[str, ...]:
    """The stored names a parameter is read from."""
    if found is None:
        return ()
    return found.names if isinstance(found, Merged) else (found,)


def _tensor_files(path: Path) -> dict[str, Path]:
    """Tensor name → the file that holds it, from headers only (no tensor bytes read)."""
    names: dict[str, Path] = {}
    for file in _checkpoint_files(path):
        if file.suffix == ".safetensors":
            keys = [k for k in _safetensors_header(file) if k != "__metadata__"]
        else:
            keys = list(_load_bin(file))
        names.update(dict.fromkeys(keys, file))
    if not names:
        raise HypercloneError(f"cannot load {path}: no *.safetensors or pytorch_model*.bin files")
    return names


def _read(on_disk: dict[str, Path], names: list[str]) -> dict[str, torch.Tensor]:
    """Read `names`, opening each file once and closing it right away: an open safetensors
    handle keeps its file mapped, and every page read stays in RSS until it closes."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(on_disk[name], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in keys})
        else:
            state = _load_bin(file)
            out.update({k: state[k].clone() for k in keys})
            del state
    return out


# safetensors dtype names of floating tensors (the header's "dtype" field).
_SAFETENSORS_FLOATS = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    # mmap: only the tensors asked for are paged in; weights_only: never run pickled code.
    return torch.load(file, map_location="cpu", mmap=True, weights_only=True)


def _checkpoint_files(path: Path) -> list[Path]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [path / f for f in sorted(set(weight_map.values()))]
        if (path / single).is_file():
            return [path / single]
    return []


def _safetensors_header(file: Path) -> dict[str, dict]:
    # The format: 8-byte little-endian header length, then a JSON header.
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def _decoder_layers(model: nn.Module) -> tuple[list[nn.Module], str | None]:
    """The decoder layers: the first ModuleList as long as `num_hidden_layers`."""
    count = _text_config(model.config).num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return list(module), name
    return [], None


@contextmanager
def _capture(layers: list[nn.Module], sink: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Pass each decoder layer's output hidden state to `sink(index, hidden)`."""

    def hook(index: int) -> Callable:
        def run(module: nn.Module, args: object, out: object) -> None:
            hidden = out[0] if isinstance(out, tuple) else out
            sink(index, hidden.detach().float())

        return run

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device but real buffers.

    `torch.device("meta")` would put buffers (RoPE inverse frequencies, computed in
    `__init__` and not stored in checkpoints) on meta too, and they could not be recovered.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _empty_model(path: Path, config: object) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        with _parameters_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as err:
        raise HypercloneError(f"cannot load {path}: {_first_line(err)}") from err
    return model.eval()


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once


# --- shared ----------------------------------------------------------------------------


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float().cpu()


def _compare_logits(src: torch.Tensor, dst: torch.Tensor) -> dict[str, float]:
    # A destination with a padded vocabulary is compared on the source's tokens.
    vocab = min(src.shape[-1], dst.shape[-1])
    src, dst = src[..., :vocab].double(), dst[..., :vocab].double()
    max_abs = (src - dst).abs().max().item()
    log_p, log_q = src.log_softmax(-1), dst.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    top1 = (src.argmax(-1) == dst.argmax(-1)).double().mean().item()
    return {
        "max_abs_diff": max_abs,
        "rel_error": max_abs / max(src.abs().max().item(), torch.finfo(torch.float32).tiny),
        "kl": kl,
        "top1_agreement": top1,
    }


def _load_config(path: Path) -> object:
    from transformers import AutoConfig

    if not path.is_dir():
        raise HypercloneError(f"cannot load {path}: not a directory")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as err:
        raise HypercloneError(f"cannot load {path}: {_first_line(err)}") from err


def _text_config(config: object) -> object:
    # Multimodal configs keep the language model's sizes in a sub-config.
    get = getattr(config, "get_text_config", None)
    return get() if get else config


def _preview(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
