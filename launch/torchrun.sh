#!/usr/bin/env bash
# Run any rpt stage on one node with torchrun: launch/torchrun.sh NPROC <stage> [hydra overrides...]
# e.g. launch/torchrun.sh 2 pretrain run.name=dp2          (data parallel over 2 processes)
#      launch/torchrun.sh 2 rpt run.tensor_parallel=2       (tensor parallel)
set -euo pipefail
nproc="${1:?usage: launch/torchrun.sh NPROC <stage> [overrides...]}"
shift
exec torchrun --standalone --nnodes 1 --nproc-per-node "$nproc" -m rpt.cli "$@"
