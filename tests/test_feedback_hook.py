"""A feedback algorithm rpt does not know by name plugs into the RL step through ``rpt.train.feedback`` alone: its
``refine`` changes what was drawn before advantages, its term reaches every micro-batch's loss, and its
``after_update`` and ``metrics`` run once per step."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

from rpt.train.feedback import FeedbackAlgorithm
from rpt.train.rl_loop import collect, rl_step
from tests.helpers import DigitTask, rl_cfg, rl_setup


@dataclass(frozen=True)
class DoubledLoss:
    """A toy term: every policy loss of the micro-batch counts twice."""

    def loss_terms(self, terms, inputs, model, rollouts, rows, temperature):
        return replace(terms, loss=2 * terms.loss)


class ToyFeedback(FeedbackAlgorithm):
    """Gives the first response of each draw reward 1 and (``double``) doubles the loss; counts its calls."""

    def __init__(self, double: bool = True):
        self.double = double
        self.calls = {"refine": 0, "prepare": 0, "after_update": 0}

    def refine(self, model, items, rollouts, texts, rewards, seed, device):
        self.calls["refine"] += 1
        rewards, replaced = rewards.clone(), torch.zeros(len(texts), dtype=torch.bool)
        rewards[0], replaced[0] = 1.0, True
        return rollouts, texts, rewards, replaced

    def prepare(self, batch, collected, micro_batch, temperature):
        self.calls["prepare"] += 1
        return replace(batch, feedback=(*batch.feedback, DoubledLoss())) if self.double else batch

    def after_update(self):
        self.calls["after_update"] += 1

    def metrics(self, batch, values, collected):
        return {"toy_refined_rows": float(collected.refined.sum())}


@pytest.fixture
def setups(runtime, tokenizer):
    def make(feedback=()):
        # no entropy bonus: it is added after the feedback terms, so the loss is exactly the doubled policy loss
        run = rl_setup(rl_cfg(["algo.entropy_coef=0"]), runtime, tokenizer, DigitTask(tokenizer))
        return replace(run, feedback=tuple(feedback))
    return make


def test_refine_changes_the_draw_before_advantages(setups):
    plain, toy = setups(), setups([ToyFeedback()])
    got_plain, got_toy = collect(plain, 0, 0), collect(toy, 0, 0)
    assert got_toy.rewards[0] == 1.0 and bool(got_toy.refined[0]) and int(got_toy.refined.sum()) == 1
    assert torch.equal(got_toy.rewards[1:], got_plain.rewards[1:])
    assert got_toy.texts == got_plain.texts


def test_an_unknown_algorithm_reaches_the_loss_and_runs_once_per_step(setups):
    algorithm = ToyFeedback()
    m_plain, _ = rl_step(setups(), 0, 0)
    m_single, _ = rl_step(setups([ToyFeedback(double=False)]), 0, 0)
    m_toy, _ = rl_step(setups([algorithm]), 0, 0)
    assert algorithm.calls == {"refine": 1, "prepare": 1, "after_update": 1}
    assert m_toy["toy_refined_rows"] == 1.0
    assert m_toy["reward_mean"] == m_plain["reward_mean"]  # the step's sampled rewards: before refinement
    assert m_toy["loss"] == pytest.approx(2 * m_single["loss"], rel=1e-5), "the term did not reach the loss"
    assert m_toy["grad_norm"] == pytest.approx(2 * m_single["grad_norm"], rel=1e-4)
