"""Streamed verification, for checkpoints larger than memory.

Each model is built with its parameters on the meta device; forward hooks read a module's
own tensors from disk just before the module runs and drop them right after, so peak
memory is about one module's weights plus activations. A large embedding or lm_head (a
plain Embedding or Linear over ROWS_BYTES) never comes whole: the embedding reads the rows
of the tokens it looks up, the head computes from row blocks read one after another.
Forward hooks on the decoder layers compare each layer's output of the wide model with the
n-fold clone of the source's, which names the first layer that diverges.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from hyperclone_cli import depth
from hyperclone_cli.checkpoint import Checkpoint
from hyperclone_cli.errors import HypercloneError
from hyperclone_cli.merged import Merged, merge_plan
from hyperclone_cli.verification import (
    CannotStream,
    LayerCheck,
    VerifyReport,
    compare_logits,
    first_line,
    model_logits,
    preview,
    text_config,
)


def verify_streamed(
    src: Checkpoint,
    dst: Checkpoint,
    src_model: nn.Module,
    dst_model: nn.Module,
    ids: torch.Tensor,
    tolerance: float,
    device: str,
    step: Callable[[], None] | None = None,
) -> VerifyReport:
    """Run `ids` through the meta-built models, reading their weights module by module;
    `step()` after each decoder layer."""
    src_layers, prefix = decoder_layers(src_model)
    dst_layers, _ = decoder_layers(dst_model)
    lmap = depth.recorded_layer_map(dst.config)  # a deeper model: new blocks inside
    why = depth.check_layer_counts(lmap, len(src_layers), len(dst_layers))
    if why:
        raise HypercloneError(
            f"{dst.path} has {len(dst_layers)} decoder layers and {src.path} has "
            f"{len(src_layers)}, and {why}: not a growth of it"
        )

    # Source first: keep each layer's output (batch × seq × d, small), then compare the
    # wide model's layers with their clones as they come and keep only the figures.
    missing, _ = _stream_weights(src, src_model, device)
    if missing:
        raise HypercloneError(f"source {src.path} is incomplete: missing {preview(missing)}")
    src_outputs: list[torch.Tensor] = []

    def keep(i: int, h_src: torch.Tensor) -> None:
        src_outputs.append(h_src)
        if step is not None:
            step()

    with depth.first_input(src_layers[0]) as src_input:
        src_logits = _run_streamed(src_model, ids, src_layers, keep)
    src.close()
    # what each wide layer must output, cloned: a new block's is the one below it
    refs = depth.layer_references(lmap, src_outputs, src_input[0] if src_input else None)

    checks: list[LayerCheck] = []

    def check(i: int, h_dst: torch.Tensor) -> None:
        if step is not None:
            step()
        h_src = refs[i]
        n, rest = divmod(h_dst.shape[-1], h_src.shape[-1])
        if rest or h_dst.shape[:-1] != h_src.shape[:-1]:
            checks.append(LayerCheck(i, float("inf"), float("inf"), False))
            return
        diff = (h_dst - torch.cat([h_src] * n, dim=-1)).abs().max().item()
        rel = diff / max(h_src.abs().max().item(), torch.finfo(torch.float32).tiny)
        checks.append(LayerCheck(i, diff, rel, rel <= tolerance))

    missing, unexpected = _stream_weights(dst, dst_model, device)
    dst_logits = _run_streamed(dst_model, ids, dst_layers, check)
    dst.close()

    figures = compare_logits(src_logits, dst_logits)
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
        with capture(layers, sink):
            return model_logits(model, ids)
    except (RuntimeError, NotImplementedError) as err:
        if "meta" not in str(err):
            raise
        # Some module used a weight it does not own, so no hook loaded it.
        raise CannotStream(
            f"streamed verify cannot run {type(model).__name__} ({first_line(err)}); use full mode"
        ) from err


def _stream_weights(
    checkpoint: Checkpoint, model: nn.Module, device: str
) -> tuple[list[str], list[str]]:
    """Install hooks so that each module of `model` (parameters on meta) reads its own
    tensors from `checkpoint` when it runs and frees them after. Returns (missing, unexpected).

    Missing weights are zero-filled so the forward pass still runs; the report fails anyway.
    """
    on_disk = checkpoint.tensors
    stored_as = _stored_names(model, on_disk, checkpoint.path)
    used: set[str] = set()
    # Tied parameters are one Parameter object under several names (e.g. lm_head.weight
    # and model.embed_tokens.weight); any of its names present on disk will do.
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)

    missing: list[str] = []
    plan: dict[nn.Module, dict[str, str | Merged | None]] = {}
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
            value = checkpoint.read(found, device, mapped=True).to(dtype=buffer.dtype)
        else:
            value = buffer.to(device)
        owner._buffers[short] = value

    for module, names in plan.items():
        if _by_rows(checkpoint, module, names, device):
            continue
        placeholders = {short: module._parameters[short] for short in names}

        def materialize(mod: nn.Module, args: object, names=names, placeholders=placeholders):
            for short, found in names.items():
                meta = placeholders[short]
                if found is None:
                    value = torch.zeros(meta.shape, dtype=meta.dtype, device=device)
                elif isinstance(found, Merged):  # per-expert tensors, stacked as on load
                    value = found.read(lambda k: checkpoint.read(k, device, mapped=True))
                    if tuple(value.shape) != tuple(meta.shape):
                        raise HypercloneError(
                            f"cannot load {checkpoint.path}: {found.names[0]} and its experts "
                            f"make shape {tuple(value.shape)}, the config implies "
                            f"{tuple(meta.shape)}"
                        )
                    value = value.to(dtype=meta.dtype)
                else:
                    stored = on_disk[found].shape  # from the header: refuse before reading
                    if stored != tuple(meta.shape):
                        raise HypercloneError(
                            f"cannot load {checkpoint.path}: {found} has shape {stored}, "
                            f"the config implies {tuple(meta.shape)}"
                        )
                    value = checkpoint.read(found, device, mapped=True).to(dtype=meta.dtype)
                mod._parameters[short] = nn.Parameter(value, requires_grad=False)

        def release(mod: nn.Module, args: object, out: object, placeholders=placeholders):
            mod._parameters.update(placeholders)

        module.register_forward_pre_hook(materialize)
        module.register_forward_hook(release)

    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", ()) or ()]
    unexpected = [k for k in on_disk if k not in used and not any(p.search(k) for p in ignore)]
    return sorted(missing), sorted(unexpected)


# A plain Linear or Embedding whose float32 weight is larger than this runs from row blocks
# of that size read from disk (the lm_head and embedding of a large vocabulary: SmolLM2 x2's
# are 226 MB each), instead of holding the whole weight at once.
ROWS_BYTES = 32 * 1024 * 1024


def _by_rows(
    checkpoint: Checkpoint, module: nn.Module, names: dict[str, str | Merged | None], device: str
) -> bool:
    """Make `module` compute from row blocks of its weight read as it runs, when it is a
    plain nn.Linear or nn.Embedding with a large weight stored as one tensor of the expected
    shape; False (and nothing changed) otherwise."""
    kind = type(module)
    weight = names.get("weight")
    if kind not in (nn.Linear, nn.Embedding) or not isinstance(weight, str):
        return False
    meta = module._parameters["weight"]
    if checkpoint.tensors[weight].shape != tuple(meta.shape) or meta.dim() != 2:
        return False  # the usual hook refuses it with its own message
    if 4 * meta.numel() <= ROWS_BYTES or checkpoint.format != "safetensors":
        return False
    if kind is nn.Embedding and module.max_norm is not None:
        return False  # renormalises the rows it looks up, in place
    bias = names.get("bias")
    if "bias" in names and not isinstance(bias, str):
        return False
    rows = max(1, ROWS_BYTES // (4 * meta.shape[1]))

    def read(r0: int, r1: int) -> torch.Tensor:
        return checkpoint.read_rows(weight, r0, r1, device, mapped=True).to(torch.float32)

    if kind is nn.Linear:

        def linear(x: torch.Tensor) -> torch.Tensor:
            b = checkpoint.read(bias, device, mapped=True).to(torch.float32) if bias else None
            parts = [
                nn.functional.linear(x, read(r0, r0 + rows), b[r0 : r0 + rows] if bias else None)
                for r0 in range(0, meta.shape[0], rows)
            ]
            return torch.cat(parts, dim=-1)

        module.forward = linear
    else:

        def embedding(ids: torch.Tensor) -> torch.Tensor:
            wanted, where = torch.unique(ids, return_inverse=True)
            table = torch.cat([read(i, i + 1) for i in wanted.tolist()])
            return nn.functional.embedding(where, table)

        module.forward = embedding
    return True


def _stored_names(model: nn.Module, on_disk: Iterable[str], path: Path) -> dict[str, str | Merged]:
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
            raise CannotStream(
                f"streamed verify cannot read {path}: transformers merges tensors such as "
                f"{matches[0][0]} when loading {type(model).__name__}; use full mode"
            )
        names.update(plan)
    return names


def decoder_layers(model: nn.Module) -> tuple[list[nn.Module], str | None]:
    """The decoder layers: the first ModuleList as long as `num_hidden_layers`."""
    count = text_config(model.config).num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return list(module), name
    return [], None


@contextmanager
def capture(layers: list[nn.Module], sink: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
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


def empty_model(path: Path, config: object) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        with _parameters_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as err:
        raise HypercloneError(f"cannot load {path}: {first_line(err)}") from err
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once
