"""The coverage matrix: every causal-LM model type that the installed `transformers` knows,
built tiny and random, sorted into a class, widened ×2 and ×3 by hyperclone, and checked
independently (loaded with AutoModelForCausalLM, logits and argmax compared).

    python tools/coverage.py                 # full matrix → docs/coverage.md, docs/coverage.json
    python tools/coverage.py --only llama,opt
    python tools/coverage.py --quick         # the CI subset (tests/test_coverage_quick.py)
    python tools/coverage.py --readme        # README snippet rendered from docs/coverage.json

Each type runs in a forked child with a time limit, so one type that hangs, crashes or
leaks memory costs one row, never the matrix. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect as pyinspect
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FACTORS = (2, 3)
REL_TOL = 1e-4
TIMEOUT_S = 60  # per model type; the slowest tiny model here builds and checks in ~5 s
VOCAB = 256
MEMORY_HEADROOM = 3 << 30  # bytes of address space a type may add to what the fork inherits
QUICK = ("llama", "qwen2", "gpt2", "opt", "gpt_neox", "xglm")  # xglm: refused (sinusoidal)

CLASSES = ("dense", "moe", "ssm/hybrid", "encoder/enc-dec", "multimodal", "unbuildable")
RESULTS = ("exact", "refused", "WRONG", "error", "not run")

# Small sizes, by every key name a config uses for the same thing.
SIZES: dict[tuple[str, ...], int] = {
    (
        "hidden_size",
        "n_embd",
        "n_embed",
        "d_model",
        "dim",
        "embed_dim",
        "model_dim",
        "word_embed_proj_dim",
        "hidden_dim",
        "emb_dim",
    ): 64,
    (
        "num_hidden_layers",
        "n_layer",
        "n_layers",
        "num_layers",
        "decoder_layers",
        "encoder_layers",
        "num_decoder_layers",
        "num_encoder_layers",
        "num_blocks",
    ): 2,  # LAYER_KEYS
    (
        "num_attention_heads",
        "n_head",
        "n_heads",
        "num_heads",
        "decoder_attention_heads",
        "encoder_attention_heads",
        "num_decoder_attention_heads",
    ): 4,
    ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"): 2,
    (
        "intermediate_size",
        "ffn_dim",
        "n_inner",
        "d_ff",
        "ffn_hidden_size",
        "decoder_ffn_dim",
        "encoder_ffn_dim",
        "inner_hidden_size",
        "dim_ff",
        "d_inner",
    ): 128,
    ("head_dim", "d_kv", "attention_head_size", "qk_nope_head_dim", "v_head_dim"): 16,
    ("qk_rope_head_dim", "rotary_dim"): 8,
    ("kv_lora_rank", "q_lora_rank"): 32,
    ("vocab_size", "n_vocab"): VOCAB,
    ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"): 128,
    ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"): 4,
    ("num_experts_per_tok", "moe_topk", "moe_k", "top_k", "num_experts_per_token"): 2,
    (
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "expert_intermediate_size",
        "moe_ffn_hidden_size",
    ): 96,
    ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"): 1,
    ("n_group", "topk_group"): 1,
    ("first_k_dense_replace",): 1,
    ("state_size", "mamba_d_state", "ssm_state_size"): 16,
    ("mamba_n_heads", "mamba_num_heads"): 4,
    ("mamba_d_head", "mamba_head_dim"): 32,
    ("image_size",): 32,
    ("patch_size",): 8,
}
SIZE_OF = {k: v for keys, v in SIZES.items() for k in keys}
LAYER_KEYS = next(keys for keys in SIZES if "num_hidden_layers" in keys)
TEXT_SUBCONFIGS = ("text_config", "decoder", "language_config", "llm_config")
OTHER_SUBCONFIGS = ("vision_config", "audio_config", "speech_config", "encoder", "vq_config")

SSM_TYPES = {
    "mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "zamba2", "bamba",
    "falcon_h1", "nemotron_h", "granitemoehybrid", "recurrent_gemma", "xlstm", "lfm2",
    "lfm2_moe", "lfm3", "qwen3_next", "kimi_linear", "minimax", "olmo_hybrid",
    "bailing_hybrid", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text",
}  # fmt: skip
SSM_KEYS = ("mamba", "ssm", "conv_kernel", "layers_block_type", "linear_attn", "rwkv", "xlstm")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


# ---------------------------------------------------------------------------------------------
# building


def _shrink(cfg_dict: dict) -> dict:
    """Our small sizes for every size key this config has; token ids inside the small vocab."""
    out = {
        k: SIZE_OF[k]
        for k, v in cfg_dict.items()
        if k in SIZE_OF and (v is None or (isinstance(v, int) and not isinstance(v, bool)))
    }
    if "kv_lora_rank" in out:  # MLA: the rotary part is the head; every head has its k/v
        out["head_dim"] = out.get("qk_rope_head_dim", out.get("head_dim"))
        out["num_key_value_heads"] = out.get("num_attention_heads")
    layers = next((cfg_dict[k] for k in LAYER_KEYS if isinstance(cfg_dict.get(k), int)), 0)
    small = SIZE_OF[LAYER_KEYS[0]]
    for k, v in cfg_dict.items():  # per-layer lists and dicts follow the layer count
        if isinstance(v, list) and layers and len(v) == layers:
            out[k] = [SIZE_OF[k]] * small if k in SIZE_OF else v[:small]
        elif isinstance(v, dict) and v and all(str(i).isdigit() for i in v):
            out[k] = {i: x for i, x in v.items() if int(i) < small}
    if "attention_types" in cfg_dict:  # GPT-Neo's compact [[pattern, repeats]]
        out["attention_types"] = [[["global", "local"], small // 2]]
    for k, v in cfg_dict.items():
        if k.endswith("_token_id") and isinstance(v, int) and v >= VOCAB:
            out[k] = VOCAB - 1 - (hash(k) % 8)
        elif k in ("dropout", "attention_dropout", "hidden_dropout") or k.endswith("_pdrop"):
            out[k] = 0.0
    return out


def make_config(model_type: str):
    from transformers import AutoConfig

    base = AutoConfig.for_model(model_type)
    kw = _shrink(base.to_dict())
    for sub in TEXT_SUBCONFIGS + OTHER_SUBCONFIGS:
        sc = getattr(base, sub, None)
        if sc is not None and hasattr(sc, "to_dict"):
            d = sc.to_dict()
            kw[sub] = {**d, **_shrink(d)}
    kw["tie_word_embeddings"] = getattr(base, "tie_word_embeddings", False)
    return AutoConfig.for_model(model_type, **kw)


def classify(model_type: str, config, arch: str) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    text = getattr(config, "text_config", None)
    keys = set(config.to_dict()) | (set(text.to_dict()) if text is not None else set())
    flat = {**(text.to_dict() if text is not None else {}), **config.to_dict()}
    if (
        getattr(config, "is_encoder_decoder", False)
        or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        or arch in ("BertGenerationDecoder", "XLNetLMHeadModel", "TrOCRForCausalLM")
        or "Whisper" in arch
    ):
        return "encoder/enc-dec"
    if any(k in keys for k in OTHER_SUBCONFIGS) or arch.endswith("ForConditionalGeneration"):
        return "multimodal"
    if model_type in SSM_TYPES or any(s in k for k in keys for s in SSM_KEYS):
        return "ssm/hybrid"
    if flat.get("is_moe") is False or flat.get("enable_moe_block") is False:
        return "dense"  # the expert block is switched off
    if any(flat.get(k) for k in MOE_KEYS) or any(
        k.startswith("moe_") and flat.get(k) for k in keys if "layer" not in k
    ):
        return "moe"
    return "dense"


def randomise(model, seed: int = 0):
    """Every parameter away from 0 and 1: norm gains 1 ± 0.3, biases N(0, 0.2), matrices with
    a 1/√fan_in spread, embeddings N(0, 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            low = name.lower()
            if p.dim() == 1 and ("norm" in low or "ln" in low) and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * (2 * torch.rand(p.shape, generator=g) - 1))
            elif p.dim() <= 1:
                p.copy_(0.2 * r)
            elif "embed" in low or "wte" in low or "wpe" in low:
                p.copy_(r)
            else:
                p.copy_(r * (1.5 / max(p[0].numel(), 1) ** 0.5))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# hints: why a refused dense type is refused, read from its tensors, config and modelling code

LLAMA_LAYER = re.compile(
    r"(self_attn\.(q|k|v|o)_proj|self_attn\.(q|k)_norm|mlp\.(gate|up|down)_proj"
    r"|(input|post_attention|pre_feedforward|post_feedforward)_layernorm)\.(weight|bias)$"
)
FUSED = ("qkv", "query_key_value", "c_attn", "wqkv", "w_pack", "att_proj", "gate_up")


MULTIPLIER_KEYS = ("multiplier", "scale_emb", "scale_depth", "logits_scaling", "logit_scale", "mup")
IGNORED_CONFIG_KEYS = {"layer_types", "sliding_window", "max_window_layers", "use_sliding_window"}


def hints(model_type: str, config, names: list[str], model) -> list[str]:
    """Likely causes, from the tensor names as stored on disk (transformers may rename them
    in memory: EXAONE loads as Llama but saves `transformer.h.*`), config and modelling code."""
    cfg = config.to_dict()
    out: list[str] = []
    layer = [n for n in names if re.search(r"\.\d+\.", n)]
    tails = {re.split(r"\.\d+\.", n, maxsplit=1)[1] for n in layer}
    outside = {n for n in names if n not in layer}
    llama_outside = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    if tails and all(LLAMA_LAYER.search(t) for t in tails) and outside <= llama_outside:
        from transformers import LlamaConfig

        extra = sorted(set(cfg) - set(LlamaConfig().to_dict()) - IGNORED_CONFIG_KEYS)
        if cfg.get("hidden_act", "silu") != "silu":
            extra.append(f"hidden_act={cfg['hidden_act']}")
        out.append("llama tensor names" + (f", config adds {','.join(extra[:6])}" if extra else ""))
    if len(set(model.state_dict()) & set(names)) < len(names) / 2:  # not just a tied head
        out.append("saved under other names than loaded (transformers key mapping)")
    fused = sorted({f for f in FUSED for n in tails if f in n.lower()})
    if fused:
        out.append("fused " + "/".join(fused))
    try:
        src = pyinspect.getsource(sys.modules[type(model).__module__]).lower()
    except Exception:  # noqa: BLE001 - a hint, never a failure
        src = ""
    if "alibi" in src or any("alibi" in k and v for k, v in cfg.items()):
        out.append("ALiBi")
    par = ("parallel_attn", "use_parallel_residual", "parallel_residual", "parallel_block")
    if any(cfg.get(k) for k in par) or any(k in src for k in par):
        out.append("parallel residual")
    mult = sorted(
        k
        for k, v in cfg.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and any(s in k for s in MULTIPLIER_KEYS)
    )
    if mult:
        out.append("multipliers " + ",".join(mult))
    if any(re.search(r"(wpe|position|pos_emb|embed_positions)", n) for n in outside):
        out.append("learned positions")
    if not out:
        extra = sorted(
            {re.sub(r"\.(weight|bias)$", "", t) for t in tails if not LLAMA_LAYER.search(t)}
        )
        out.append("other layout: " + ", ".join(extra[:4]) if extra else "other layout")
    return out


# ---------------------------------------------------------------------------------------------
# one model type


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {msg}"[:300]


def compare(src_model, dst: Path, ids) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    wide, info = AutoModelForCausalLM.from_pretrained(
        dst, dtype=torch.float32, output_loading_info=True
    )
    wide.eval()
    missing, unexpected = list(info["missing_keys"]), list(info["unexpected_keys"])
    with torch.no_grad():
        a = src_model(ids, use_cache=False).logits.float()
        b = wide(ids, use_cache=False).logits.float()
    if a.shape != b.shape:
        return {"ok": False, "why": f"logit shapes {tuple(a.shape)} vs {tuple(b.shape)}"}
    diff = (a - b).abs().max().item()
    rel = diff / max(a.abs().max().item(), 1e-30)
    argmax = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    ok = not missing and not unexpected and rel <= REL_TOL and argmax == 1.0
    why = []
    if missing:
        why.append(f"missing keys {missing[:3]}")
    if unexpected:
        why.append(f"unexpected keys {unexpected[:3]}")
    if not rel <= REL_TOL:
        why.append(f"rel error {rel:.2e}")
    if argmax < 1.0:
        why.append(f"argmax agreement {argmax:.3f}")
    return {
        "ok": ok,
        "max_abs": diff,
        "rel": rel,
        "argmax_agreement": argmax,
        "missing": missing[:5],
        "unexpected": unexpected[:5],
        "why": "; ".join(why),
    }


def run_type(model_type: str, workdir: Path) -> dict:
    """Build, classify, expand ×2/×3, check. Never raises: every failure becomes a row."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from hyperclone_cli import HypercloneError, expand

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    row: dict = {"model_type": model_type, "architecture": arch, "class": None}
    start = time.perf_counter()
    try:
        row["class"] = classify(model_type, AutoConfig.for_model(model_type), arch)  # defaults
        config = make_config(model_type)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        randomise(model)
        src = workdir / "src"
        model.save_pretrained(src, safe_serialization=True)
        from safetensors import safe_open

        names = []
        for f in sorted(src.glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                names += list(st.keys())
        if row["class"] == "dense" and any("expert" in n for n, _ in model.named_parameters()):
            row["class"] = "moe"
        row["params"] = sum(p.numel() for p in model.parameters())
        model, info = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, output_loading_info=True
        )
        model.eval()
        if info["missing_keys"] or info["unexpected_keys"]:
            row["note"] = "source does not reload cleanly: " + str(
                (info["missing_keys"] + info["unexpected_keys"])[:3]
            )
        ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            model(ids, use_cache=False)
    except Exception as e:  # noqa: BLE001 - any failure to build is the row's answer
        row["guessed_class"] = row["class"]
        row["class"] = "unbuildable"
        row["result"] = "not run"
        row["reason"] = one_line(e)
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row

    row["factors"] = {}
    for n in FACTORS:
        dst = workdir / f"x{n}"
        try:
            expand(src, dst, factor=n, verify=False)
        except HypercloneError as e:
            why = one_line(e).split(": ", 1)[1].split("; supported: ")[0]  # not the long list
            row["factors"][n] = {"result": "refused", "reason": why}
            continue
        except Exception as e:  # noqa: BLE001 - a bug in hyperclone: record it loudly
            tb = traceback.extract_tb(e.__traceback__)[-1]
            where = f" at {Path(tb.filename).name}:{tb.lineno}"
            row["factors"][n] = {"result": "error", "reason": one_line(e) + where}
            continue
        try:
            c = compare(model, dst, ids)
        except Exception as e:  # noqa: BLE001 - the widened checkpoint does not load or run
            c = {"ok": False, "why": "widened model fails to load/run: " + one_line(e)}
        res = {"result": "exact" if c.pop("ok") else "WRONG", **c}
        if res["result"] == "exact":
            res.pop("why", None)
        else:
            res["reason"] = res.pop("why")
        row["factors"][n] = res
        shutil.rmtree(dst, ignore_errors=True)
    results = [f["result"] for f in row["factors"].values()]
    for r in ("WRONG", "error", "refused", "exact"):  # the worst outcome names the row
        if r in results:
            row["result"] = r
            break
    bad = [f for f in row["factors"].values() if f["result"] != "exact"]
    if bad:
        row["reason"] = bad[0]["reason"]
    if row["result"] != "exact" and row["class"] == "dense":
        row["hints"] = hints(model_type, config, names, model)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _limit_memory(extra_bytes: int = MEMORY_HEADROOM) -> None:
    """Cap the child's address space a little above what the fork inherited: a config whose
    defaults we failed to shrink fails with MemoryError instead of swapping out the machine."""
    with contextlib.suppress(Exception):
        import resource

        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + extra_bytes, size + extra_bytes))


def _child(model_type: str, workdir: str, conn) -> None:
    _limit_memory()
    null = os.open(os.devnull, os.O_WRONLY)  # the child's chatter (progress bars, warnings)
    os.dup2(null, 1)
    os.dup2(null, 2)
    with contextlib.nullcontext():
        try:
            row = run_type(model_type, Path(workdir))
        except BaseException as e:  # noqa: BLE001
            row = {"model_type": model_type, "class": "unbuildable", "result": "not run"}
            row["reason"] = "harness: " + one_line(e)
    conn.send(json.dumps(row, default=str))
    conn.close()


def run_guarded(model_type: str, timeout: float = TIMEOUT_S) -> dict:
    """run_type in a forked child with a time limit; a crash or a hang is a row too."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "?")
    fail = {"model_type": model_type, "architecture": arch, "class": "unbuildable"}
    fail["result"] = "not run"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hc-cov-{model_type}-") as tmp:
        ctx = mp.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(model_type, tmp, send), daemon=True)
        proc.start()
        send.close()
        row = None
        if recv.poll(timeout):
            with contextlib.suppress(EOFError):
                row = json.loads(recv.recv())
        if row is None:
            if proc.is_alive():
                proc.kill()
                fail["reason"] = f"timed out after {timeout:.0f} s"
            else:
                proc.join()
                fail["reason"] = f"child died (exit code {proc.exitcode})"
            fail["seconds"] = round(time.perf_counter() - start, 2)
            row = fail
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    return row


# ---------------------------------------------------------------------------------------------
# reports


def versions() -> dict:
    import torch
    import transformers

    import hyperclone_cli

    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "hyperclone": hyperclone_cli.__version__,
    }


def counts(rows: list[dict]) -> dict:
    by_class = {c: sum(r["class"] == c for r in rows) for c in CLASSES}
    by_result = {
        c: {res: sum(r["class"] == c and r["result"] == res for r in rows) for res in RESULTS}
        for c in CLASSES
    }
    return {"by_class": by_class, "by_class_and_result": by_result}


def _rel(row: dict, n: int) -> str:
    f = (row.get("factors") or {}).get(str(n)) or (row.get("factors") or {}).get(n)
    if not f:
        return ""
    if "rel" in f:
        return f"{f['rel']:.1e}"
    return f["result"]


def render_md(data: dict) -> str:
    v, rows, c = data["versions"], data["rows"], data["counts"]
    out = [
        "# Coverage matrix",
        "",
        "Generated by `make coverage` (`tools/coverage.py`): every model type in "
        "`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, built tiny from its config class with random "
        "weights and norm gains, widened ×2 and ×3 by `hyperclone_cli.expand(verify=False)`, then "
        "checked independently: loaded with `AutoModelForCausalLM` (no missing or unexpected "
        f"keys), max |Δlogit| / max |logit| ≤ {REL_TOL:g} and identical argmax on a random batch.",
        "",
        f"transformers {v['transformers']}, torch {v['torch']}, hyperclone {v['hyperclone']}; "
        f"{len(rows)} model types; {data['seconds']:.0f} s.",
        "",
        "| class | types | exact | refused | WRONG | error | not run |",
        "|---|---|---|---|---|---|---|",
    ]
    for cl in CLASSES:
        r = c["by_class_and_result"][cl]
        cells = " | ".join(str(r[x]) for x in RESULTS)
        out.append(f"| {cl} | {c['by_class'][cl]} | {cells} |")
    wrong = [r for r in rows if r["result"] in ("WRONG", "error")]
    out += ["", f"**WRONG or error: {len(wrong)}**" + (" — " if wrong else "")]
    if wrong:
        out[-1] += ", ".join(f"`{r['model_type']}`" for r in wrong)
    out += [
        "",
        "| model type | class | architecture | result | ×2 rel | ×3 rel | reason / hints |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {c: i for i, c in enumerate(CLASSES)}
    for r in sorted(rows, key=lambda r: (order.get(r["class"], 9), r["model_type"])):
        res = f"**{r['result']}**" if r["result"] in ("WRONG", "error") else r["result"]
        why = r.get("reason", "").replace("|", "\\|")
        if r.get("hints"):
            why = f"[{'; '.join(r['hints'])}] " + why
        if r.get("note"):
            why += f" ({r['note']})"
        cells = [r["model_type"], r["class"], r.get("architecture", ""), res]
        cells += [_rel(r, 2), _rel(r, 3), why[:200]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def render_readme(data: dict) -> str:
    """The README snippet: the headline sentence and a table of the exact model types."""
    v, rows = data["versions"], data["rows"]
    dense = [r for r in rows if r["class"] == "dense"]
    exact = [r for r in dense if r["result"] == "exact"]
    tv = ".".join(v["transformers"].split(".")[:2])
    lines = [
        f"{len(exact)} of {len(dense)} dense decoder model types in transformers {tv} expand "
        "exactly (×2 and ×3, checked with `transformers`; the full matrix, refusals with their "
        "reasons, is in [docs/coverage.md](docs/coverage.md), made by `make coverage`).",
        "",
        "| model type | architecture | max \\|Δlogit\\| relative ×2 | ×3 |",
        "|---|---|---|---|",
    ]
    for r in sorted(exact, key=lambda r: r["model_type"]):
        lines.append(
            f"| `{r['model_type']}` | `{r['architecture']}` | {_rel(r, 2)} | {_rel(r, 3)} |"
        )
    other = [r for r in rows if r["class"] != "dense" and r["result"] == "exact"]
    if other:
        names = ", ".join(f"`{r['model_type']}` ({r['class']})" for r in other)
        lines += ["", f"Also exact outside the dense class: {names}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def all_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def warm_up() -> None:
    """Run one type in this process before forking, so that the shared imports (modelling
    utilities, generation, safetensors, hyperclone) are paid once (~15 s), not per type."""
    with tempfile.TemporaryDirectory(prefix="hc-cov-warm-") as tmp:
        run_type("llama", Path(tmp))


def run_matrix(types: list[str], timeout: float = TIMEOUT_S, log=print) -> dict:
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    warm_up()
    rows = []
    for i, t in enumerate(types, 1):
        row = run_guarded(t, timeout)
        rows.append(row)
        extra = row.get("reason", "")[:90] + (f" {row['hints']}" if row.get("hints") else "")
        log(f"[{i}/{len(types)}] {t:28s} {row['class']:16s} {row['result']:8s} {extra}")
    data = {"versions": versions(), "seconds": round(time.perf_counter() - start, 1)}
    data |= {"counts": counts(rows), "rows": rows}
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated model types")
    ap.add_argument("--quick", action="store_true", help=f"the CI subset: {', '.join(QUICK)}")
    ap.add_argument("--readme", action="store_true", help="print the README snippet from JSON")
    ap.add_argument(
        "--out", type=Path, help="where coverage.md/.json go (default: docs/ for the full matrix)"
    )
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per model type")
    args = ap.parse_args(argv)

    if args.readme:
        src = (args.out or DOCS) / "coverage.json"
        print(render_readme(json.loads(src.read_text())), end="")
        return 0
    known = all_types()
    if args.only or args.quick:
        types = list(QUICK) if args.quick else [t.strip() for t in args.only.split(",") if t]
        unknown = [t for t in types if t not in known]
        if unknown:
            print(f"unknown model types: {', '.join(unknown)}", file=sys.stderr)
            return 2
    else:
        types = known
    data = run_matrix(types, args.timeout)
    subset = bool(args.only or args.quick)
    out = args.out or (None if subset else DOCS)  # a subset never overwrites docs/
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "coverage.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        (out / "coverage.md").write_text(render_md(data))
        print(f"wrote {out}/coverage.md and coverage.json in {data['seconds']:.0f} s")
    wrong = [r["model_type"] for r in data["rows"] if r["result"] in ("WRONG", "error")]
    if wrong:
        print(f"WRONG or error: {', '.join(wrong)}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
