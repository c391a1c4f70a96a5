"""``model.distributed_optimizer``: megatron's distributed optimizer (Adam state and main weights sharded over
data-parallel ranks) trains exactly like the plain one, and its checkpoints save and resume (megatron's
``fully_reshardable`` format, loadable on CPU through cpu_compat (G)); one process here, two gloo processes in
``tests/dp_scenarios.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.dp_scenarios import tiny_trainable, train_steps, weights

ROOT = Path(__file__).resolve().parent.parent


def test_distributed_optimizer_is_megatrons_and_trains_like_the_plain_one(runtime):
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    plain, sharded = tiny_trainable(runtime, False), tiny_trainable(runtime, True)
    assert all(isinstance(o, DistributedOptimizer) for o in sharded.optimizer.chained_optimizers)
    assert not any(isinstance(o, DistributedOptimizer) for o in plain.optimizer.chained_optimizers)
    assert sharded.model.ddp_config.use_distributed_optimizer
    train_steps(plain, runtime, range(3))
    train_steps(sharded, runtime, range(3))
    for a, b in zip(weights(plain), weights(sharded), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_sgd_steps_along_the_gradient(runtime):
    """``optimizer=sgd``: the first step moves each weight by -lr x its gradient (momentum starts at the
    gradient), where Adam's first step would move it by about lr x sign(gradient). Megatron's distributed
    optimizer shards Adam only, so SGD with it is refused."""
    trainable = tiny_trainable(runtime, False, optimizer="sgd", lr=0.5, min_lr=0.5, warmup_steps=0,
                               weight_decay=0.0, clip_grad=1e9)
    params = list(trainable.model.module.parameters())
    before = [p.detach().clone() for p in params]
    grads, step = [], trainable.step
    trainable.step = lambda: grads.extend(p.main_grad.detach().clone() for p in params) or step()
    train_steps(trainable, runtime, range(1))
    assert max(float(g.abs().max()) for g in grads) > 1e-3
    for p, w0, g in zip(params, before, grads, strict=True):
        torch.testing.assert_close(p.detach(), w0 - 0.5 * g, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="pretrain.optimizer must be one of"):
        tiny_trainable(runtime, False, optimizer="lion")
    with pytest.raises(ValueError, match="shards Adam only"):
        tiny_trainable(runtime, True, optimizer="sgd")


def test_distributed_optimizer_resumes_exactly(runtime, tmp_path):
    """Saved after 2 steps and loaded into a fresh (never-stepped) trainable, 2 more steps equal 4 straight ones:
    Adam's moments, its step count (each parameter's own) and the schedule all come back."""
    from rpt import checkpoint

    straight = tiny_trainable(runtime, True)
    train_steps(straight, runtime, range(4))
    first = tiny_trainable(runtime, True)
    train_steps(first, runtime, range(2))
    checkpoint.save(tmp_path, 2, first, {})
    resumed = tiny_trainable(runtime, True)
    assert checkpoint.resume_or_init(tmp_path, resumed)[0] == 2
    steps = [s["step"] for o in resumed.optimizer.chained_optimizers for s in o.optimizer.state.values()]
    assert steps and all(float(s) == 2 for s in steps) and len({id(s) for s in steps}) == len(steps)
    train_steps(resumed, runtime, range(2, 4))
    for a, b in zip(weights(straight), weights(resumed), strict=True):
        assert torch.equal(a, b), float((a - b).abs().max())
    with pytest.raises(ValueError, match="distributed_optimizer=True"):  # the optimizer kinds do not cross-load
        checkpoint.resume_or_init(tmp_path, tiny_trainable(runtime, False))


@pytest.mark.multiprocess
def test_two_ranks_shard_the_optimizer_and_resume_exactly(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
           str(ROOT / "tests" / "dp_scenarios.py"), "distributed_optimizer", "-", str(tmp_path / "ckpt")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_every_optimizer_step_is_recorded_as_a_weight_write_also_through_data(runtime):
    """megatron's bf16 optimizer copies its fp32 main weights into the bf16 model through ``.data``, which leaves
    the parameters' version counters where they were, so a rollout engine keyed on them kept stale weights. The
    trainer records each step itself (``rpt.model.weight_writes``), and the vLLM engine's key follows it."""
    from dataclasses import replace

    from rpt.model.weight_writes import weight_writes
    from rpt.rollout.vllm_engine import weights_version

    trainable = tiny_trainable(replace(runtime, dtype=torch.bfloat16), distributed_optimizer=False)
    model = trainable.model.module
    matrices = [p for p in model.parameters() if p.dtype == torch.bfloat16 and p.dim() == 2]
    before = [p.detach().clone() for p in matrices]
    versions, key, writes = [p._version for p in matrices], weights_version(model), weight_writes(model)
    train_steps(trainable, runtime, range(1))
    assert all(not torch.equal(p, b) for p, b in zip(matrices, before, strict=True))  # every matrix was written
    assert [p._version for p in matrices] == versions  # ... and no version counter saw it
    assert weight_writes(model) == writes + 1 and weights_version(model) != key
