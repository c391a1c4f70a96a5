"""Critique-GRPO (``algo=critique_grpo``, arXiv 2506.03106): the shaping function's value and gradient, the
refinement gate, count and selection, and real RL steps on a tiny megatron model: refinements replace failed
responses only in the gated groups, are re-scored under the plain prompt, and change training versus GRPO on the
same rollouts."""

from __future__ import annotations

import json

import pytest
import torch

from rpt.algo.critique import choose_refinements, refine_gate, refinement_count, shape_refinements, shaped_probability
from rpt.algo.losses import PolicyTerms
from rpt.tasks.next_token import NextTokenTask
from rpt.train.refinement import Refiner
from rpt.train.rl_loop import collect, rl_step
from tests.helpers import DigitTask, policy_weights, rl_cfg, rl_setup


def test_shaping_value_and_gradient():
    logp = torch.log(torch.tensor([0.01, 0.1, 0.5, 0.9])).requires_grad_()
    p = logp.detach().exp()
    shaped = shaped_probability(logp, 0.1)
    torch.testing.assert_close(shaped.detach(), p / (p + 0.1))
    shaped.sum().backward()
    torch.testing.assert_close(logp.grad, 0.1 * p / (p + 0.1) ** 2)  # d/dlogp of p/(p+γ) = γp/(p+γ)²
    assert logp.grad[1] > logp.grad[3]  # low-probability tokens get the larger push

    # in the loss: refinement tokens take -A·π/(π+γ) and are never counted as clipped; other tokens keep PPO's
    logp = torch.log(torch.tensor([[0.2, 0.4], [0.3, 0.6]]))
    flags = torch.ones(2, 2, dtype=torch.bool)
    terms = PolicyTerms(torch.full((2, 2), 7.0), {"clip_frac_low": flags, "clip_frac_high": ~flags})
    refinement = torch.tensor([[False, False], [True, True]])
    out = shape_refinements(terms, logp, torch.tensor([[1.0], [2.0]]), refinement, 0.1)
    torch.testing.assert_close(out.loss[0], torch.full((2,), 7.0))
    torch.testing.assert_close(out.loss[1], -2.0 * torch.tensor([0.3 / 0.4, 0.6 / 0.7]))
    assert out.metrics["clip_frac_low"].tolist() == [[True, True], [False, False]]


def test_gate_count_and_selection():
    assert [refinement_count(g, 7) for g in (2, 4, 8, 16)] == [1, 1, 1, 2]  # G=8: the paper's 7 + 1
    assert refinement_count(8, 3) == 2 and refinement_count(4, 1) == 2
    with pytest.raises(ValueError, match="group_size >= 2"):
        refinement_count(1, 7)
    correct = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1]).bool()
    assert refine_gate(correct, 4, "all_wrong").tolist() == [True, False, False]
    assert refine_gate(correct, 4, "always").tolist() == [True, True, False]  # a group without a failure: nothing
    with pytest.raises(ValueError, match="gate"):
        refine_gate(correct, 4, "sometimes")
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # correct refinements first, whatever the random order
        assert set(choose_refinements(torch.tensor([False, True, False, True]), 2, gen)) == {1, 3}
    assert len(choose_refinements(torch.tensor([False] * 3), 2, gen)) == 2


def _pair(runtime, tokenizer, extra=()):
    """GRPO and Critique-GRPO set-ups from the same start (same initial rollouts)."""
    common = ["rollout.max_new_tokens=8", "algo.norm_adv_by_std=false", *extra]
    grpo = rl_setup(rl_cfg(common), runtime, tokenizer, DigitTask(tokenizer))
    crit = rl_setup(rl_cfg(["algo=critique_grpo", "algo.critique.kind=indicative", *common]), runtime, tokenizer,
                  DigitTask(tokenizer))
    return grpo, crit


@pytest.mark.parametrize("gate", ["all_wrong", "always"])
def test_refinements_replace_failed_responses_of_gated_groups(gate, runtime, tokenizer):
    grpo, crit = _pair(runtime, tokenizer, [f"algo.critique.gate={gate}", "algo.critique.candidates=3"])
    plain, refined = collect(grpo, 0, 0), collect(crit, 0, 0)
    G, k = 4, crit.feedback_of(Refiner).k
    groups = plain.rewards.view(-1, G)
    gated = refine_gate(plain.rewards, G, gate)
    assert 0 < int(gated.sum()), "the toy task must give gated groups"
    if gate == "all_wrong":
        assert int(gated.sum()) < len(gated), "the toy task must also give groups with a correct response"
    assert refined.refined.view(-1, G).sum(1).tolist() == [k if g else 0 for g in gated.tolist()]
    for i in range(len(plain.texts)):
        if refined.refined[i]:  # replaces a failed response of a gated group, under the group's plain prompt
            assert gated[i // G] and groups.view(-1)[i] <= 0.5
            assert int(refined.rollouts.prompt_lens[i]) == int(plain.rollouts.prompt_lens[i])
            p = int(plain.rollouts.prompt_lens[i])
            assert torch.equal(refined.rollouts.tokens[i, :p], plain.rollouts.tokens[i, :p])
            assert refined.rewards[i] == crit.task.reward(None, refined.texts[i])
            assert tokenizer.decode(refined.rollouts.response_ids(i)) == refined.texts[i]
        else:  # everything else is the GRPO rollout
            assert refined.texts[i] == plain.texts[i] and refined.rewards[i] == plain.rewards[i]
    stats = crit.feedback_of(Refiner).counts
    assert stats["refined"] == int(gated.sum()) and stats["generated"] >= int(gated.sum())


def test_critique_grpo_changes_training_and_logs_its_metrics(runtime, tokenizer):
    grpo, crit = _pair(runtime, tokenizer)
    m_grpo, _ = rl_step(grpo, 0, 0)
    m, _ = rl_step(crit, 0, 0)
    assert m["reward_mean"] == m_grpo["reward_mean"]  # the same initial rollouts (refinements are extra)
    assert 0 < m["refined_group_share"] < 1 and 0 <= m["refine_success_rate"] <= 1
    assert m["entropy_refinement"] is not None and m["refinement_row_share"] > 0
    diff = max(float((a - b).abs().max()) for a, b in zip(policy_weights(crit), policy_weights(grpo), strict=True))
    assert diff > 1e-6, "critique_grpo trained the same weights as grpo"


def test_ground_truth_and_self_critiques(tmp_path, runtime, tokenizer):
    """The ground-truth critique of a next-token item reveals the true continuation's first token(s); a
    self-critique is written by the policy; both drive a real RPT step."""
    ids = tokenizer.encode("The cat sat on the mat and then the dog sat on the")
    items = [{"context": ids[:8], "target": ids[8:12]}, {"context": ids[:6], "target": ids[6:10]}]
    path = tmp_path / "positions.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    task = NextTokenTask(path, tokenizer, "{context}<think>")
    for kind in ("ground_truth", "self"):
        run = rl_setup(rl_cfg(["algo=critique_grpo", f"algo.critique.kind={kind}", "rpt.prompts_per_step=2",
                           "algo.critique.reference_tokens=2", "algo.entropy_coef=0.01"]), runtime, tokenizer, task)
        if kind == "ground_truth":
            first_two = b"".join(task.target_bytes(items[0])[:2]).decode()
            assert run.feedback_of(Refiner).critique_text(items[0], "x").endswith(first_two)
        m, _ = rl_step(run, 0, 0)
        assert m["refined_group_share"] == 1.0 and m["refinement_row_share"] > 0 and m["update_applied"] == 1.0


def test_bad_critique_settings_are_refused():
    for bad in ("algo.critique.kind=vague", "algo.critique.gate=often", "algo.critique.gamma=0"):
        with pytest.raises(ValueError, match="algo.critique"):
            rl_cfg(["algo=critique_grpo", bad])
    with pytest.raises(ValueError, match="separate algorithms"):
        rl_cfg(["algo=critique_grpo", "algo.sdpo.enabled=true"])


@pytest.mark.parametrize("option", ["algo.critique.kind=ground_truth", "algo.critique.gamma=0.5",
                                    "algo.critique.ratio=1", "algo.critique.candidates=1"])
def test_every_critique_option_changes_training(option, runtime, tokenizer):
    """From the same start and initial rollouts, each option trains other weights than the default set-up."""
    common = ["algo=critique_grpo", "algo.critique.kind=indicative", "algo.critique.candidates=3",
              "rollout.max_new_tokens=8"]
    weights = []
    for extra in ([], [option]):
        run = rl_setup(rl_cfg([*common, *extra]), runtime, tokenizer, DigitTask(tokenizer))
        rl_step(run, 0, 0)
        weights.append(policy_weights(run))
    assert max(float((a - b).abs().max()) for a, b in zip(*weights, strict=True)) > 1e-7, option
