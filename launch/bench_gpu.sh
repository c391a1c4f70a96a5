#!/usr/bin/env bash
# The GPU benchmark of docs/benchmarks.md on one GPU: Qwen2.5-1.5B shape (random weights), bf16, batch 64.
#   launch/bench_gpu.sh [extra hydra overrides...]      -> bench_gpu.json (and JSON on stdout)
# Parts: decode against HF generate (static cache), training tokens/s and MFU against a plain HF
# forward/backward, entropy scoring against a plain forward. The TRL peer and the process-scaling part are left
# out (CPU figures). Overrides after the script name win, e.g. model=tiny to try it on a laptop.
# Not yet run on a GPU by these sessions: the figures in docs/benchmarks.md are CPU-only so far.
set -euo pipefail
exec "${PYTHON:-python}" -m rpt.cli bench model=qwen2_5_1_5b run.dtype=bfloat16 logging=disabled \
    bench.batch_size=64 bench.prompt_len=256 bench.new_tokens=256 bench.train_seq_len=1024 bench.repeats=3 \
    bench.parts='[rollout,train,scoring]' bench.peak_flops=989e12 bench.out=bench_gpu.json "$@"
