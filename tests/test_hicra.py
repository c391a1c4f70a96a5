"""HICRA (arXiv 2509.03646): planning-token credit, strategic grams (given and mined), semantic entropy; and that
`algo.advantage=hicra` changes training relative to the same advantages without the planning credit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rpt.algo.advantages import compute_advantages
from rpt.analysis.planning import gram_counts, mine_strategic_grams, planning_mask, shannon_entropy


def test_hicra_advantages_hand_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    planning = torch.tensor([[True, False], [True, False], [False, False], [False, True]])
    algo = SimpleNamespace(advantage="hicra", planning_alpha=0.2)
    adv = compute_advantages(rewards, 4, algo, planning)
    # A = r - mean = [.75, -.25, -.25, -.25]; planning tokens get A + 0.2|A|: .9 for the correct response, -.2 for
    # the wrong ones (credit grows by 1.2, blame shrinks by 0.8), execution tokens keep A
    expected = torch.tensor([[0.9, 0.75], [-0.2, -0.25], [-0.25, -0.25], [-0.25, -0.2]])
    torch.testing.assert_close(adv, expected)
    grpo = compute_advantages(rewards, 4, SimpleNamespace(advantage="grpo", norm_adv_by_std=False, adv_eps=1e-6),
                              planning)
    torch.testing.assert_close(grpo, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_strategic_gram_matching_on_token_spans():
    tokens = [b"Wa", b"it, ", b"let", b" me", b" check", b": 2", b"+2"]
    assert planning_mask(tokens, ["wait, ", "let me check"]) == [True, True, True, True, True, False, False]
    assert planning_mask(tokens, ["me ch"]) == [False, False, False, True, True, False, False]  # partial overlap


def test_semantic_entropy_of_gram_frequencies():
    texts = ["Wait, let me check. Wait, no.", "let me check again"]
    assert gram_counts(texts, ["wait", "let me check", "never"]) == [2, 2, 0]
    assert shannon_entropy([2, 2, 0]) == pytest.approx(math.log(2))
    assert shannon_entropy([5]) == 0.0 and shannon_entropy([]) == 0.0


def test_mined_grams_are_clusters_present_in_the_most_solutions():
    solutions = ["first we add 12 and 3 so the answer is 15", "first we add 4 and 5 so the answer is 9",
                 "first we add 7 and 1 then check so the answer is 8", "random words here only"]
    every = mine_strategic_grams(solutions, sizes=(3,), keep=1.0)
    # clusters in >= 2 solutions: numbers differ, the cluster (digits -> #) does not
    assert {"so the answer", "first we add", "the answer is", "add 12 and", "add 4 and", "add 7 and"} <= set(every)
    assert "random words here" not in every and "then check so" not in every  # in one solution only
    # seven clusters tie at 3 solutions; the top 20% is ceil(1.4) = 2 of them, ties broken by the normal form
    top = mine_strategic_grams(solutions, sizes=(3,), keep=0.2)
    assert top == sorted(["12 and 3", "4 and 5", "7 and 1", "add 12 and", "add 4 and", "add 7 and"])
    assert mine_strategic_grams(solutions[:1] * 3, sizes=(3,), keep=0.2)  # one solution repeated still counts
    assert mine_strategic_grams([]) == []


def test_english_gram_list_ships_as_a_config_group():
    from rpt import config as schema
    from tests.helpers import compose_config

    cfg = schema.load(compose_config("grams=english"))
    assert "let me check" in cfg.analysis.strategic_grams and "alternatively" in cfg.analysis.strategic_grams


def test_hicra_changes_training(runtime, tokenizer):
    """Same rollouts, same A = r − mean r: the planning credit alone makes HICRA's weights differ from Dr.GRPO's."""
    from rpt.stages.rl_training import mine_grams
    from rpt.train.rl_loop import rl_step
    from tests.helpers import policy_weights, rl_cfg, rl_setup

    digits = "[" + ",".join(f"'{d}'" for d in "0123456789") + "]"
    results = {}
    for name, algo in {"drgrpo": ["algo.norm_adv_by_std=false"], "hicra": ["algo.advantage=hicra"]}.items():
        run = rl_setup(rl_cfg([*algo, f"analysis.strategic_grams={digits}"]), runtime, tokenizer)
        m, _ = rl_step(run, 0, 0)
        results[name] = (m, policy_weights(run))
    (m_base, w_base), (m_hicra, w_hicra) = results["drgrpo"], results["hicra"]
    assert m_hicra["response_length"] == m_base["response_length"] and m_hicra["planning_token_share"] > 0
    assert m_hicra["semantic_entropy"] > 0
    assert max(float((a - b).abs().max()) for a, b in zip(w_base, w_hicra, strict=True)) > 1e-7
    first = mine_grams(run, run.trainable.model.module, 4)
    assert first == mine_grams(run, run.trainable.model.module, 4) and first  # deterministic, never empty
