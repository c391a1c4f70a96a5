"""One real GRPO step (rollout → reward → advantages → update) on a tiny megatron model, for every loss variant
and entropy-toolkit switch: the update is applied, every metric is finite, the first update is exactly on-policy;
every remedy trains differently from plain GRPO under a configuration where it can act, and a configuration where
it cannot is refused; the data cursor walks every prompt once per epoch whatever the refill setting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rpt import config as schema
from rpt.algo.losses import POLICY_LOSSES
from rpt.cli import CONF_DIR
from rpt.train.rl_loop import collect, rl_step
from tests.helpers import DigitShareTask, policy_weights, rl_cfg, rl_setup

schema.register()


def _record_gradients(run) -> list[list[torch.Tensor]]:
    """The gradients each optimizer step of ``run`` receives (appended per step): what two set-ups that must
    train alike are compared on. Their weights after an Adam step are not comparable across summation orders:
    Adam's first step is about lr x sign(gradient), and a near-zero gradient's sign follows the order."""
    steps, step, params = [], run.trainable.step, list(run.trainable.model.module.parameters())
    run.trainable.step = lambda: steps.append([p.main_grad.detach().clone() for p in params]) or step()
    return steps


@pytest.mark.parametrize("overrides", [
    [],
    ["algo=gppo", "rpt.ppo_mini_batch_size=2"],
    ["algo=clip_higher", "rpt.ppo_epochs=2"],
    ["algo=clip_cov", "algo.clip_cov_ratio=0.2", "algo.clip_cov_low=-10", "algo.clip_cov_high=10"],
    ["algo=kl_cov", "algo.kl_cov_ratio=0.1", "rpt.ppo_mini_batch_size=1"],
    ["algo=forking"],
    ["algo.loss_agg=seq-mean-token-mean", "algo.norm_adv_by_std=false"],
    ["algo.loss_agg=seq-mean-token-sum-norm", "algo.entropy_coef=0.01"],
    ["algo.dynamic_sampling=true", "algo.max_refills=1"],
    ["algo.kl_coef=0.1", "algo.share_prompt=false"],
    ["rpt.ppo_epochs=2", "rpt.micro_batch_size=4"],
    ["algo.reuse_update_forward=false"],  # a separate old-policy pass: the KL to it must still be exactly 0
])
def test_rl_step_variants(overrides, runtime, tokenizer):
    cfg = rl_cfg(overrides)
    run = rl_setup(cfg, runtime, tokenizer, ref=bool(cfg.algo.kl_coef))
    before = policy_weights(run)
    m, cursor = rl_step(run, step=0, cursor=0)
    assert m["update_applied"] == 1.0 and m["optimizer_steps"] == cfg.rpt.updates_per_rollout()
    assert cursor == 1 + m["refills"]
    assert any(not torch.equal(a, b) for a, b in zip(before, policy_weights(run), strict=True))
    for key in ("reward_mean", "entropy", "entropy_forking", "clip_frac_low", "clip_frac_high", "cov_mean",
                "response_length", "train_rollout_gap", "all_equal_share", "time/generate_s", "time/update_s", "loss",
                "tokens_per_s", "entropy_execution", "forking_token_share", "grad_norm", "rollout_tokens"):
        assert math.isfinite(m[key]), key
    if cfg.rpt.updates_per_rollout() == 1:
        assert m["kl_to_old"] == 0.0  # a single update is exactly on-policy
    assert m["train_rollout_gap"] < 1e-3  # sampler and trainer agree up to float reordering
    if cfg.algo.forking_rho:
        assert 0.1 < m["trained_token_share"] <= 0.35
    else:
        assert m["trained_token_share"] == 1.0


@pytest.mark.parametrize("overrides", [[], ["algo.loss_agg=seq-mean-token-sum-norm", "algo.entropy_coef=0.01"]])
def test_reusing_the_update_forward_changes_nothing(overrides, runtime, tokenizer):
    """With one optimizer step per rollout, old log-probs taken from the update's own forward give the same
    metrics and the same gradients as a separate old-policy pass."""
    results = []
    for reuse in (True, False):
        run = rl_setup(rl_cfg([*overrides, f"algo.reuse_update_forward={str(reuse).lower()}"]), runtime, tokenizer)
        grads = _record_gradients(run)
        m, _ = rl_step(run, step=0, cursor=0)
        assert len(grads) == 1
        results.append((m, grads[0]))
    (fast, g_fast), (slow, g_slow) = results
    assert fast["update_applied"] == slow["update_applied"] == 1.0
    for key in slow:
        if slow[key] is None:
            assert fast[key] is None, key
        elif not key.endswith("_s") and key not in ("tokens_per_s", "peak_memory_gb"):
            assert fast[key] == pytest.approx(slow[key], rel=1e-6, abs=1e-7), key
    assert max(float(g.abs().max()) for g in g_slow) > 0
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


# Four optimizer steps per rollout (one prompt each) at a learning rate large enough that tokens leave the clip
# range after the first step: the setting under which every remedy can act.
MOVING = ["rpt.ppo_mini_batch_size=1", "rpt.lr=0.05", "rpt.min_lr=0.05", "rpt.warmup_steps=0",
          "rollout.max_new_tokens=12"]
SETTINGS = {"clip_higher": ["algo=clip_higher"], "forking": ["algo=forking"]}  # remedies that are not losses


def _remedy_overrides(name: str) -> list[str]:
    """A registered loss through its preset (``conf/algo/<name>.yaml``) where it has one, else by name."""
    if name in SETTINGS:
        return SETTINGS[name]
    return [f"algo={name}"] if (Path(CONF_DIR) / "algo" / f"{name}.yaml").exists() else [f"algo.policy_loss={name}"]


@pytest.fixture(scope="module")
def grpo_under_mini_batches(runtime, tokenizer):
    base = rl_setup(rl_cfg(MOVING), runtime, tokenizer)
    m_base, _ = rl_step(base, step=0, cursor=0)
    assert m_base["optimizer_steps"] == 4
    assert m_base["clip_frac_low"] + m_base["clip_frac_high"] > 0  # the clip is live: GPPO and clip-higher can act
    return m_base, policy_weights(base)


@pytest.mark.parametrize("name", sorted(set(POLICY_LOSSES) - {"ppo"}) + sorted(SETTINGS))
def test_every_remedy_changes_training(name, grpo_under_mini_batches, runtime, tokenizer):
    """Under mini-batches each remedy's trained weights differ from plain GRPO's (from the same start, on the same
    rollouts: the first draw is identical because sampling happens before any update). Every registered policy
    loss is a case here: a loss registered without acting fails."""
    m_base, w_base = grpo_under_mini_batches
    run = rl_setup(rl_cfg([*MOVING, *_remedy_overrides(name)]), runtime, tokenizer)
    m, _ = rl_step(run, step=0, cursor=0)
    assert m["response_length"] == m_base["response_length"], name  # same rollouts
    diff = max(float((a - b).abs().max()) for a, b in zip(policy_weights(run), w_base, strict=True))
    assert diff > 1e-6, f"{name} trained the same weights as grpo"


def test_truncated_importance_sampling_acts_only_where_sampler_and_trainer_differ(runtime, tokenizer):
    """With top-p sampling the sampler's log-probs (renormalised over the nucleus) exceed the trainer's, so
    ``algo.tis_cap`` reweights the policy term and the gradient changes; with plain sampling they agree to float
    rounding and the gradient is GRPO's to the same tolerance."""

    def first_gradient(*overrides):
        run = rl_setup(rl_cfg(["algo.entropy_coef=0.0", *overrides]), runtime, tokenizer)
        steps = _record_gradients(run)
        metrics, _ = rl_step(run, step=0, cursor=0)
        return metrics, torch.cat([g.flatten() for g in steps[0]])

    for top_p, acts in ((0.7, True), (1.0, False)):
        m_off, off = first_gradient(f"rollout.top_p={top_p}")
        m_on, on = first_gradient(f"rollout.top_p={top_p}", "algo.tis_cap=2")
        assert m_on["response_length"] == m_off["response_length"]  # the same rollouts
        assert off.abs().max() > 0
        gap = float((on - off).abs().max() / off.abs().max())
        assert (gap > 1e-3) if acts else (gap < 1e-4), (top_p, gap, m_off["train_rollout_gap"])


@pytest.mark.parametrize("overrides", [["algo=gppo"], ["algo=kl_cov"], ["algo=clip_higher"], ["algo=gspo"],
                                       ["algo.clip_high=0.28"]])
def test_a_remedy_that_cannot_act_is_refused(overrides):
    with pytest.raises(ValueError, match="one optimizer step per rollout"):
        rl_cfg(overrides)
    rl_cfg([*overrides, "rpt.ppo_mini_batch_size=2"])  # several steps per rollout: accepted
    rl_cfg([*overrides, "rpt.ppo_epochs=2"])


@pytest.mark.parametrize("dynamic", [False, True])
def test_the_cursor_walks_every_prompt_once_per_epoch(dynamic, runtime, tokenizer):
    """Prompt batches are drawn at a cursor advanced once per draw, so consecutive draws walk the seeded epoch
    permutation: eight prompts, two per draw, four draws cover all eight whatever ``max_refills`` is."""
    prompts = [f"{a} + {a} = " for a in range(1, 9)]
    cfg = rl_cfg(["rpt.prompts_per_step=2", "algo.max_refills=2", f"algo.dynamic_sampling={str(dynamic).lower()}"])
    task = DigitShareTask(tokenizer, prompts)
    run = rl_setup(cfg, runtime, tokenizer, task)
    cursor = step = 0
    while len(task.drawn) < len(prompts):
        cursor = collect(run, step, cursor).cursor
        step += 1
    assert cursor * 2 == len(task.drawn)
    assert sorted(task.drawn[:8]) == sorted(prompts)


def test_validation_does_not_change_training(runtime, tokenizer):
    """Greedy validation every step (on the same toy task's prompts) leaves every training metric and the trained
    weights exactly as a run without it."""
    from rpt.eval.validation import Validator
    from rpt.rollout.engine import SamplingParams

    results = []
    for validate in (False, True):
        cfg = rl_cfg(["rpt.eval_every=1"])
        run = rl_setup(cfg, runtime, tokenizer)
        if validate:
            run.validator = Validator(run.task, 3, SamplingParams.from_rollout(cfg.rollout, tokenizer), 0, runtime)
        rows, cursor = [], 0
        for step in range(2):
            m, cursor = rl_step(run, step, cursor)
            rows.append(m)
        results.append((rows, policy_weights(run)))
    (plain, w_plain), (validated, w_validated) = results
    assert all("val/accuracy" in m and m["val/n"] == 3 for m in validated)
    for a, b in zip(plain, validated, strict=True):
        for key, value in a.items():
            if not key.endswith("_s") and key not in ("tokens_per_s", "peak_memory_gb"):
                assert b[key] == value, key
    for a, b in zip(w_plain, w_validated, strict=True):
        assert torch.equal(a, b)


def test_sample_rows_pick_the_best_and_the_worst(runtime, tokenizer):
    """Logged samples are half the highest-reward and half the lowest-reward rollouts, with their ground truth."""
    from dataclasses import replace

    from rpt.train.rl_metrics import sample_rows

    cfg = rl_cfg(["logging.sample_every=1", "logging.samples=2"])
    run = rl_setup(cfg, runtime, tokenizer)
    got = collect(run, 0, 0)
    rewards = torch.randperm(len(got.texts), generator=torch.Generator().manual_seed(0)).float()
    rows = sample_rows(run, replace(got, rewards=rewards), step=1)
    assert sorted(r["reward"] for r in rows) == [float(rewards.min()), float(rewards.max())]
    best = int(rewards.argmax())
    chosen = next(r for r in rows if r["reward"] == float(rewards.max()))
    assert chosen["response"] == got.texts[best] and chosen["reference"] == got.items[best // 4]
    m, _ = rl_step(run, 0, 0)
    assert len(m["samples"]) == 2 and {r["step"] for r in m["samples"]} == {1}


def test_the_phases_account_for_the_step(runtime, tokenizer):
    """Every phase of an RL step is timed: each phase that ran took time, the ones that did not read 0, and what
    no phase covers is a small share of the step's wall time."""
    cfg = rl_cfg(["algo.kl_coef=0.01", "rpt.ppo_epochs=2", "analysis.diversity_every=1", "logging.sample_every=0"])
    run = rl_setup(cfg, runtime, tokenizer, ref=True)
    m, _ = rl_step(run, step=0, cursor=0)
    ran = ("generate", "reward", "advantages", "old_policy", "reference", "batch", "update", "policy_metrics",
           "planning_metrics", "diversity", "answers", "resources")
    assert all(m[f"time/{name}_s"] > 0 for name in ran), {k: v for k, v in m.items() if k.startswith("time/")}
    assert all(m[f"time/{name}_s"] == 0 for name in ("refine", "feedback", "overlap", "validation", "samples"))
    phases = sum(v for k, v in m.items() if k.startswith("time/") and k not in ("time/step_s", "time/other_s"))
    assert phases + m["time/other_s"] == pytest.approx(m["time/step_s"])
    assert m["time/other_s"] <= max(0.05 * m["time/step_s"], 0.02)
