"""Scenarios run by ``tests/test_dp_collectives.py`` as 2 gloo processes under torchrun (not collected by pytest):

    python -m torch.distributed.run --nproc-per-node 2 tests/dp_scenarios.py <scenario> <tokenizer.model>

Each rank checks its own assertions; any failure (or a hang, caught by the caller's timeout) fails the test.
- ``dynamic_sampling``: rank 1's groups always have equal rewards, so dynamic sampling keeps none of them; every
  rank must still enter the same collectives (no hang, no preemption faked by a mismatched all-reduce), and both
  ranks end with the same weights.
- ``cov_masks``: the token covariance and the Cov / forking choices over a batch split across the two ranks equal
  those computed over the whole batch in one process.
- ``reward_metrics``: a user's reward whose extra metric names differ between the ranks is logged alike on both.
- ``distributed_optimizer <dir>``: megatron's distributed optimizer shards Adam's state over the two ranks, trains
  exactly like the plain optimizer, and a run checkpointed after 2 steps and resumed equals 4 uninterrupted steps.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch


def _init():
    from rpt import runtime

    return runtime.init(SimpleNamespace(device="cpu", dtype="auto", seed=0, tensor_parallel=1, pipeline_parallel=1))


def _half_constant_task(tokenizer):
    from rpt.tasks.base import Task

    class HalfConstantTask(Task):
        """Four prompts per draw: the odd ones (rank 1's share) always earn 0, the even ones the digit share."""

        def items_for_step(self, step, count, seed):
            return list(self.items)[:count]

        def prompt_ids(self, item):
            return self.tokenizer.encode(item[1])

        def reward(self, item, response_text):
            if item[0] == "const":
                return 0.0
            return sum(c.isdigit() for c in response_text) / max(1, len(response_text))

    items = [("vary", "1 + 2 = "), ("const", "3 + 4 = "), ("vary", "5 + 6 = "), ("const", "7 + 8 = ")]
    return HalfConstantTask(items, tokenizer)


def dynamic_sampling(rt, tokenizer_file: str) -> None:
    from hydra import compose, initialize_config_dir

    from rpt import config as schema
    from rpt.cli import CONF_DIR
    from rpt.distributed import dp_sum
    from rpt.stages.rl_training import make_setup
    from rpt.tokenizer import Tokenizer
    from rpt.train import preemption
    from rpt.train.optim import build_trainable
    from rpt.train.rl_loop import collect, rl_step

    schema.register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = schema.load(compose(config_name="config", overrides=[
            "experiment=smoke", "stage=rpt", "rollout.stop_at_answer=false", "rollout.max_new_tokens=8",
            "algo.dynamic_sampling=true", "algo.max_refills=1", "rpt.prompts_per_step=4", "rpt.micro_batch_size=4"]))
    tok = Tokenizer(tokenizer_file)
    torch.manual_seed(0)
    trainable = build_trainable(cfg.model, tok.vocab_size, rt, cfg.rpt, cfg.rpt.steps)
    run = make_setup(cfg, rt, trainable, _half_constant_task(tok), cfg.rpt)
    got = collect(run, 0, 0)
    assert len(got.rollouts) == (0 if rt.dp_rank == 1 else 2 * cfg.rollout.group_size), len(got.rollouts)
    assert got.cursor == 2  # the refill was decided globally: both ranks drew twice
    cursor = 0
    for step in range(2):
        metrics, cursor = rl_step(run, step, cursor)
        assert metrics["update_applied"] == 1.0, metrics
    assert not preemption.should_stop(), "a mismatched collective faked a preemption signal"
    checksum = sum(float(p.detach().double().sum()) for p in trainable.model.module.parameters())
    total = dp_sum(checksum)
    assert math.isclose(total, 2 * checksum, rel_tol=1e-12), (checksum, total)  # both ranks hold the same weights


def cov_masks(rt, tokenizer_file: str) -> None:
    from rpt.algo.token_choice import clip_cov_mask, forking_mask, kl_cov_mask, token_covariance

    g = torch.Generator().manual_seed(5)
    logp = -torch.rand(6, 9, generator=g) * 4
    adv = torch.randn(6, 1, generator=g).expand(6, 9)
    mask = torch.rand(6, 9, generator=g) > 0.25
    mask[4:] = False  # rank 1's rows 4-5: no response tokens at all, rows 3 still some
    rows = slice(0, 3) if rt.dp_rank == 0 else slice(3, 6)
    cov = token_covariance(logp[rows], adv[rows], mask[rows])
    # one process over the whole batch: the means are over every masked token
    n = mask.sum()
    expected_cov = torch.where(mask, (logp - (logp * mask).sum() / n) * (adv - (adv * mask).sum() / n), 0.0)
    torch.testing.assert_close(cov, expected_cov[rows])
    total = int(n)
    values = expected_cov[mask]
    top = torch.zeros(total, dtype=torch.bool)
    top[torch.topk(values, max(1, math.floor(0.1 * total))).indices] = True
    expected_kl = torch.zeros_like(mask)
    expected_kl[mask] = top
    assert torch.equal(kl_cov_mask(cov, mask[rows], 0.1), expected_kl[rows])
    entropy = torch.rand(6, 9, generator=torch.Generator().manual_seed(9))
    top = torch.zeros(total, dtype=torch.bool)
    top[torch.topk(entropy[mask], math.ceil(0.2 * total)).indices] = True
    expected_fork = torch.zeros_like(mask)
    expected_fork[mask] = top
    assert torch.equal(forking_mask(entropy[rows], mask[rows], 0.2), expected_fork[rows])
    picked = clip_cov_mask(cov, mask[rows], 0.2, -0.5, 0.5, torch.Generator().manual_seed(1))
    assert not (picked & ~mask[rows]).any()
    assert ((cov[picked] > -0.5) & (cov[picked] < 0.5)).all()
    from rpt.distributed import dp_sum

    window = int(((values > -0.5) & (values < 0.5)).sum())
    assert dp_sum(float(picked.sum())) == min(max(1, math.floor(0.2 * total)), window)  # the global count


def tiny_trainable(rt, distributed_optimizer: bool, total_steps: int = 4, **train):
    """A fresh tiny GPT trainable (same weights for one seed), with or without megatron's distributed optimizer;
    ``train``: PretrainConfig fields other than the default lr 1e-2 and one warm-up step."""
    from rpt.config import ModelConfig, PretrainConfig
    from rpt.model import cpu_compat
    from rpt.train.optim import build_trainable

    cpu_compat.seed_all(0)
    model = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                        distributed_optimizer=distributed_optimizer)
    return build_trainable(model, 97, rt, replace(PretrainConfig(), **{"lr": 1e-2, "warmup_steps": 1, **train}),
                           total_steps)


def train_steps(trainable, rt, steps: range) -> None:
    """Next-token steps on random tokens that depend on (step, data-parallel rank) only."""
    for k in steps:
        tokens = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(100 + 2 * k + rt.dp_rank))
        trainable.zero_grad()
        trainable.model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens).float().mean().backward()
        assert trainable.step()[0]


def weights(trainable) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainable.model.module.parameters()]


def distributed_optimizer(rt, tokenizer_file: str) -> None:
    from rpt import checkpoint
    from rpt.distributed import dp_sum

    ckpt = Path(sys.argv[3])
    plain, straight = tiny_trainable(rt, False), tiny_trainable(rt, True)
    train_steps(plain, rt, range(4))
    train_steps(straight, rt, range(4))
    held = sum(p.numel() for g in straight.optimizer.param_groups for p in g["params"])
    total = sum(p.numel() for p in straight.model.module.parameters())
    assert held < total and dp_sum(float(held)) == total, (held, total)  # each rank steps its own shard
    for a, b in zip(weights(plain), weights(straight), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    first = tiny_trainable(rt, True)
    train_steps(first, rt, range(2))
    checkpoint.save(ckpt, 2, first, {})
    resumed = tiny_trainable(rt, True)
    assert checkpoint.resume_or_init(ckpt, resumed)[0] == 2
    train_steps(resumed, rt, range(2, 4))
    for a, b in zip(weights(straight), weights(resumed), strict=True):
        assert torch.equal(a, b), float((a - b).abs().max())


def rank_reward(response_text, item, tokenizer):
    """A user's reward (``reward_metrics`` loads it from this file) whose extra numbers differ by rank."""
    import torch.distributed as dist

    return {"score": 1.0, "seen": float(item), "on_rank_0": 1.0} if dist.get_rank() == 0 else {"score": 0.0,
                                                                                             "seen": float(item)}


def reward_metrics(rt, tokenizer_path):
    """A user's reward whose extra metric names differ between the ranks (``on_rank_0`` only on rank 0, and rank 1
    scores three responses to rank 0's one): both ranks take the same collectives and log the same whole-batch
    means."""
    from rpt.distributed import gather_objects
    from rpt.reward.custom import reward_metrics, take_metrics, with_reward
    from rpt.tasks.base import Task

    class Numbers(Task):
        def prompt_ids(self, item):
            return []

        def reward(self, item, response_text):
            return 0.0

    task = with_reward(Numbers([1, 2, 3, 4], None), f"{Path(__file__).resolve()}:rank_reward")
    mine = [1] if rt.dp_rank == 0 else [2, 3, 4]
    assert [task.reward(item, "") for item in mine] == [1.0 - rt.dp_rank] * len(mine)
    metrics = reward_metrics(task, take_metrics(task))
    assert metrics == {"reward/on_rank_0": 1.0, "reward/seen": 2.5}, metrics
    assert gather_objects(metrics) == [metrics, metrics]


if __name__ == "__main__":
    scenario, tokenizer_path = sys.argv[1], sys.argv[2]
    runtime = _init()
    try:
        {"dynamic_sampling": dynamic_sampling, "cov_masks": cov_masks,
         "distributed_optimizer": distributed_optimizer, "reward_metrics": reward_metrics}[scenario](runtime,
                                                                                                   tokenizer_path)
    finally:
        from rpt import runtime as rt_mod

        rt_mod.shutdown()
