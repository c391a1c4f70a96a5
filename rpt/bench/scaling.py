"""`rpt bench` part ``scoring_processes``: the entropy-scoring benchmark run by 1 and by N data-parallel processes
(``torchrun``), on the same model config and documents, each process given an equal share of the CPU threads (or
its own GPU). Reports corpus tokens/s per process count and the speedup over one process.

Each count runs as a child ``rpt bench bench.parts=[scoring]`` with this run's own command-line overrides, so it
measures exactly what ``rpt select`` does under ``torchrun`` (shard the windows, score, gather).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_OWN_KEYS = ("bench.parts", "bench.out", "bench.peers", "bench.processes")


def _user_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(_OWN_KEYS) and not o.startswith("stage=")]


def bench_scoring_processes(bc) -> dict:
    cores = os.cpu_count() or 1
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in bc.processes:
            result = Path(tmp) / f"scoring_{n}.json"
            launcher = [sys.executable, "-m", "rpt.cli"] if n == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                "-m", "rpt.cli"]
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // n)))
            cmd = [*launcher, "bench", *_user_overrides(), "bench.parts=[scoring]", "bench.peers=false",
                   f"bench.out={result}", "logging=disabled"]
            log.info("bench scoring with %d process(es): %s", n, " ".join(cmd))
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"scoring bench with {n} processes failed:\n{proc.stderr[-3000:]}")
            out[f"scoring_tok_s_{n}proc"] = json.loads(result.read_text())["scoring"]["scoring_tok_s"]
    base = out.get("scoring_tok_s_1proc")
    if base:
        for n in bc.processes:
            if n != 1:
                out[f"speedup_{n}proc_vs_1"] = out[f"scoring_tok_s_{n}proc"] / base
    out["threads_per_process"] = {str(n): max(1, cores // n) for n in bc.processes}
    return out
