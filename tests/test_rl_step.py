"""One real GRPO step (rollout → reward → advantages → update) on a tiny megatron model, for every loss variant
and entropy-toolkit switch: the update is applied, every metric is finite, and the first update is exactly
on-policy (KL to the rollout-time policy is 0)."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from rpt import config as schema
from rpt.cli import CONF_DIR
from rpt.rundir import RunDir
from rpt.stages.context import StageContext
from rpt.tasks.base import epoch_order
from rpt.train.optim import build_trainable
from rpt.train.rl_loop import rl_step

schema.register()


class DigitShareTask:
    """A verifiable toy task: reward = share of digit characters in the response (varies across samples)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prompts = ["1 + 2 = ", "3 + 4 + 5 = ", "9 - 3 = ", "2 + 2 + 2 = "]

    def __len__(self):
        return len(self.prompts)

    def items_for_step(self, step, count, seed):
        return [self.prompts[i] for i in epoch_order(len(self.prompts), step, count, seed)]

    def prompt_ids(self, item):
        return self.tokenizer.encode(item)

    def reward(self, item, response_text):
        return sum(c.isdigit() for c in response_text) / max(1, len(response_text))


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "rollout.stop_at_answer=false",
                                                        "rollout.max_new_tokens=8", *overrides])


@pytest.mark.parametrize("overrides", [
    [],
    ["algo=gppo"],
    ["algo=clip_cov", "algo.clip_cov_ratio=0.2", "algo.clip_cov_low=-10", "algo.clip_cov_high=10"],
    ["algo=kl_cov", "algo.kl_cov_ratio=0.1"],
    ["algo=forking"],
    ["algo.loss_agg=seq-mean-token-mean", "algo.norm_adv_by_std=false"],
    ["algo.loss_agg=seq-mean-token-sum-norm", "algo.entropy_coef=0.01"],
    ["algo.dynamic_sampling=true", "algo.max_refills=1"],
    ["algo.kl_coef=0.1"],
    ["rpt.ppo_epochs=2", "rpt.micro_batch_size=4"],
    ["algo.reuse_update_forward=false"],  # a separate old-policy pass: the KL to it must still be exactly 0
])
def test_rl_step_variants(overrides, runtime, tokenizer, tmp_path):
    cfg = _cfg(overrides)
    ctx = StageContext(cfg=cfg, rt=runtime, rd=RunDir(tmp_path, "x"), stage="rpt")
    torch.manual_seed(0)
    trainable = build_trainable(cfg.model, tokenizer.vocab_size, runtime, cfg.rpt, cfg.rpt.steps)
    ref = build_trainable(cfg.model, tokenizer.vocab_size, runtime, cfg.rpt, 1).model.module if cfg.algo.kl_coef else None
    before = [p.detach().clone() for p in trainable.model.module.parameters()]
    m = rl_step(ctx, trainable, DigitShareTask(tokenizer), tokenizer, step=0, loop_cfg=cfg.rpt, ref_model=ref)
    assert m["update_applied"] == 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable.model.module.parameters()))
    for key in ("reward_mean", "entropy", "entropy_forking", "clip_frac_low", "clip_frac_high", "cov_mean",
                "response_length", "train_rollout_gap", "all_equal_share", "rollout_s", "update_s",
                "tokens_per_s", "entropy_execution", "forking_token_share"):
        assert math.isfinite(m[key]), key
    assert m["kl_to_old"] == 0.0  # the first pass of the first epoch is exactly on-policy
    assert m["train_rollout_gap"] < 1e-3  # sampler and trainer agree up to float reordering
    if cfg.algo.forking_rho:
        assert 0.1 < m["trained_token_share"] <= 0.35
    else:
        assert m["trained_token_share"] == 1.0


@pytest.mark.parametrize("overrides", [[], ["algo.loss_agg=seq-mean-token-sum-norm", "algo.entropy_coef=0.01"]])
def test_reusing_the_update_forward_changes_nothing(overrides, runtime, tokenizer, tmp_path):
    """With one PPO epoch, old log-probs taken from the update's own forward give the same metrics and the same
    updated weights as a separate old-policy pass."""
    results = []
    for reuse in (True, False):
        cfg = _cfg([*overrides, f"algo.reuse_update_forward={str(reuse).lower()}"])
        ctx = StageContext(cfg=cfg, rt=runtime, rd=RunDir(tmp_path, "x"), stage="rpt")
        torch.manual_seed(0)
        trainable = build_trainable(cfg.model, tokenizer.vocab_size, runtime, cfg.rpt, cfg.rpt.steps)
        m = rl_step(ctx, trainable, DigitShareTask(tokenizer), tokenizer, step=0, loop_cfg=cfg.rpt)
        results.append((m, [p.detach().clone() for p in trainable.model.module.parameters()]))
    (fast, w_fast), (slow, w_slow) = results
    assert fast["update_applied"] == slow["update_applied"] == 1.0
    for key in slow:
        if slow[key] is None:
            assert fast[key] is None, key
        elif not key.endswith("_s") and key != "tokens_per_s":
            assert fast[key] == pytest.approx(slow[key], rel=1e-6, abs=1e-7), key
    for a, b in zip(w_fast, w_slow):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
