"""Scenarios run by ``tests/test_dp_collectives.py`` as 2 gloo processes under torchrun (not collected by pytest):

    python -m torch.distributed.run --nproc-per-node 2 tests/dp_scenarios.py <scenario> <tokenizer.model>

Each rank checks its own assertions; any failure (or a hang, caught by the caller's timeout) fails the test.
- ``dynamic_sampling``: rank 1's groups always have equal rewards, so dynamic sampling keeps none of them; every
  rank must still enter the same collectives (no hang, no preemption faked by a mismatched all-reduce), and both
  ranks end with the same weights.
- ``cov_masks``: the token covariance and the Cov / forking choices over a batch split across the two ranks equal
  those computed over the whole batch in one process.
"""

from __future__ import annotations

import math
import sys
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
    from rpt.tokenizer import Tokenizer
    from rpt.train import preemption
    from rpt.train.optim import build_trainable
    from rpt.train.rl_loop import collect, make_setup, rl_step

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
    from rpt.algo.losses import clip_cov_mask, forking_mask, kl_cov_mask, token_covariance

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


if __name__ == "__main__":
    scenario, tokenizer_path = sys.argv[1], sys.argv[2]
    runtime = _init()
    try:
        {"dynamic_sampling": dynamic_sampling, "cov_masks": cov_masks}[scenario](runtime, tokenizer_path)
    finally:
        from rpt import runtime as rt_mod

        rt_mod.shutdown()
