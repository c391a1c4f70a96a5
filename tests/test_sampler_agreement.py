"""The sampler-trainer agreement gate: ``token_mult_prob_error`` against hand values, its warning, and a planted
fault (rollouts sampled from other weights than the trainer's) that the metric and the warning catch."""

from __future__ import annotations

import math

import pytest
import torch

from rpt.train.mismatch import MismatchWatch
from rpt.train.rl_metrics import sampler_agreement


def test_token_mult_prob_error_against_hand_values(runtime):
    trainer = torch.tensor([[-1.0, -2.0, -0.5, -9.0]])
    sampler = torch.tensor([[-1.0, -2.5, -0.25, 0.0]])
    mask = torch.tensor([[True, True, True, False]])  # the last token is padding: not counted
    got = sampler_agreement(trainer, sampler, mask)
    assert got["train_rollout_gap"] == pytest.approx((0 + 0.5 + 0.25) / 3)
    assert got["token_mult_prob_error"] == pytest.approx((1 + math.exp(0.5) + math.exp(0.25)) / 3)
    assert got["token_mult_prob_error_max"] == pytest.approx(math.exp(0.5))
    assert sampler_agreement(trainer, trainer, mask)["token_mult_prob_error"] == 1.0


def test_the_warning_fires_once_above_the_bound_and_reaches_the_summary():
    from types import SimpleNamespace

    watch = MismatchWatch("rpt", SimpleNamespace(mismatch_warn=1.05))
    watch.observe(1, 1.0000002)
    assert watch.warning is None
    watch.observe(2, 1.31)
    watch.observe(3, 1.2)
    assert watch.warning.startswith("rpt: at step 2") and "1.310" in watch.warning
    assert watch.summary() == {"token_mult_prob_error_max_step": 1.31, "mismatch_warning": watch.warning}


def test_rollouts_from_stale_weights_are_caught(runtime, tokenizer):
    """A planted fault: the rollouts' log-probs come from the policy before an update the sampler never saw (a
    skipped weight sync). The same rollouts scored by the trainer on its own weights agree to float rounding."""
    from rpt.model.forward import sequence_logprobs
    from rpt.rollout.engine import SamplingParams, generate
    from tests.helpers import rl_cfg, rl_setup

    run = rl_setup(rl_cfg(["rpt.lr=0.05"]), runtime, tokenizer)
    model = run.trainable.model.module
    prompts = [run.task.prompt_ids(p) for p in run.task.items]
    drawn = generate(model, prompts * 4, SamplingParams(8, 1.0, eos_id=-1, pad_id=0), 0, "cpu")
    inputs, targets, mask = drawn.tokens[:, :-1], drawn.tokens[:, 1:], drawn.response_mask[:, 1:]
    with torch.no_grad():
        own, _ = sequence_logprobs(model, inputs, targets)
    assert sampler_agreement(own, drawn.sample_logprobs[:, 1:], mask)["token_mult_prob_error"] < 1.001
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the trainer moved on; the sampler kept the old weights
        moved, _ = sequence_logprobs(model, inputs, targets)
    error = sampler_agreement(moved, drawn.sample_logprobs[:, 1:], mask)["token_mult_prob_error"]
    watch = MismatchWatch("rpt", run.rollout)
    watch.observe(1, error)
    assert error > run.rollout.mismatch_warn and watch.warning is not None
