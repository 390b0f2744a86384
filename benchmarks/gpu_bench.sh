#!/usr/bin/env bash
# The GPU section of `make bench` alone, for a machine with a GPU: `--device cpu` against
# `--device cuda` against the floor on a 672M-parameter bf16 Llama widened x2 (4.85 GB),
# plain and with noise, whether both devices write the same bytes, `verify` on cuda, and a
# cProfile of one cuda expand. Run from the repository root; figures go to $OUT (default
# benchmarks/gpu/): gpu_bench.json, gpu_bench.log, cuda_expand_profile.txt. Then
# tests/test_noise.py, whose CUDA cases check CPU/CUDA identity (tests.log). Skips the CUDA
# parts where there is none (the JSON says "cuda": false). About 3 minutes on one H100;
# at most 6 (the bench stops at 5: its log keeps every figure already measured).
set -uo pipefail
out="${OUT:-benchmarks/gpu}"
mkdir -p "$out"
python3 -c 'import torch; print("cuda:", torch.cuda.is_available(), torch.__version__)' \
  | tee "$out/gpu_bench.log"
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current \
  --format=csv >> "$out/gpu_bench.log" 2>&1 || true
timeout 300 python3 benchmarks/expand_bench.py --gpu-only --sizes "${SIZES:-gpu}" \
  --repeat "${REPEAT:-2}" --profile "$out" --out "$out/gpu_bench.json" \
  > /dev/null 2>> "$out/gpu_bench.log"
echo "bench exit: $?" >> "$out/gpu_bench.log"
timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/test_noise.py \
  > "$out/tests.log" 2>&1
echo "tests exit: $?" >> "$out/tests.log"
tail -n 3 "$out/gpu_bench.log" "$out/tests.log"
