"""Group diversity measures and the unbiased pass@k estimator against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rpt.analysis.diversity import (
    chrf,
    distinct_answers,
    distinct_ngram_share,
    distinct_trajectories,
    mean_pairwise_similarity,
    pass_at_k,
)


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 8, 3) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(2 / 8)
    assert pass_at_k(8, 2, 2) == pytest.approx(1 - math.comb(6, 2) / math.comb(8, 2))  # 1 - 15/28
    assert pass_at_k(4, 1, 4) == 1.0  # every draw includes the correct one
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_chrf_hand_values():
    assert chrf("abc", "abc") == pytest.approx(1.0)
    assert chrf("abc", "xyz") == 0.0
    # unigrams: precision 2/2, recall 2/3; bigrams: "ab" of {"ab"} vs {"ab","bc"}: 1, 1/2; no trigram on one side
    p, r = (1 + 1) / 2, (2 / 3 + 1 / 2) / 2
    assert chrf("ab", "abc") == pytest.approx(5 * p * r / (4 * p + r))
    assert chrf("", "") == 1.0 and chrf("a", "") == 0.0


def test_group_measures():
    texts = ["add 2 and 3 gives 5", "add 2 and 3 gives 5", "three plus two is five"]
    assert distinct_answers(["5", " 5", None, "6", ""]) == 2
    assert distinct_ngram_share(texts) == pytest.approx(7 / 11)  # 4 + 4 + 3 trigrams; the copy repeats 4
    assert distinct_trajectories(texts, threshold=0.7) == 2  # the copies merge, the paraphrase does not
    assert distinct_trajectories(texts[:1]) == 1 and distinct_trajectories(texts, threshold=0.0) == 1
    sim = mean_pairwise_similarity(texts)
    assert (1.0 + 2 * chrf(texts[0], texts[2]) / 2 + 2 * chrf(texts[2], texts[0]) / 2) / 3 == pytest.approx(sim)


def test_pass_at_ks_over_items():
    from rpt.eval.accuracy import pass_at_ks

    # item 1: one of two right; item 2: none; a partial reward (0.3) does not count as correct
    assert pass_at_ks([[True, False], [False, False]]) == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}
