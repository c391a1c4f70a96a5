"""Collectives at every layout: DP=2 gloo runs of the RL step where one rank has nothing to learn, and of the
global token choices; every reduction lives in ``rpt.distributed`` and uses the device its backend needs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _torchrun(scenario: str, tokenizer_file) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
           str(ROOT / "tests" / "dp_scenarios.py"), scenario, str(tokenizer_file)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as hang:
        pytest.fail(f"{scenario}: the ranks hung (mismatched collectives)\n{(hang.stderr or b'')[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.multiprocess
def test_dp2_dynamic_sampling_with_a_rank_left_empty(tokenizer_file):
    _torchrun("dynamic_sampling", tokenizer_file)


@pytest.mark.multiprocess
def test_dp2_token_choices_equal_one_process(tokenizer_file):
    _torchrun("cov_masks", tokenizer_file)


def test_reductions_use_cuda_buffers_under_nccl(monkeypatch):
    """NCCL reduces only CUDA tensors: the buffer device follows the backend."""
    from rpt import distributed

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert distributed.reduce_device() == torch.device("cuda", 0)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "gloo")
    assert distributed.reduce_device() == torch.device("cpu")


def test_every_collective_goes_through_rpt_distributed():
    """No library module calls torch.distributed collectives itself (they would pick their own device/group)."""
    pattern = re.compile(r"\bdist\.(all_reduce|all_gather\w*|broadcast\w*|reduce_scatter\w*|barrier|gather|scatter)\(")
    files = [p for folder in ("rpt", "data_prep") for p in (ROOT / folder).rglob("*.py") if p.name != "distributed.py"]
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in files
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
