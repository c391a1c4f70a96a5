"""Paired differences with seed-level intervals (rpt.analysis.paired) against hand computation: the per-run paired
difference by bucket, the Student-t interval over seeds, the document bootstrap keeping a document's positions
together, the headline deciding only on the t-interval, old eval files without per-position scores, and the
aggregate report end to end on run directories written into tmp_path."""

from __future__ import annotations

import numpy as np
import pytest

from rpt.analysis.aggregate import build_aggregate_report
from rpt.analysis.paired import (
    cluster_bootstrap,
    paired_headline,
    paired_table,
    run_difference,
    seed_interval,
    t_quantile,
)
from rpt.rundir import write_json

THRESHOLDS = [0.5, 1.0, 1.5]
RPT, BASE, CORPUS = ("rpt", "reasoning_greedy"), ("base", "direct"), ("base", "direct_corpus")


def nt_file(doc: list[int], entropy: list[float], scores: dict, thresholds=THRESHOLDS) -> dict:
    """A next_token.json in the new format: items, per-position scores and the bucket results they imply."""
    def cell(s, threshold):
        chosen = [x for x, e in zip(s, entropy, strict=True) if e > threshold]
        return {"accuracy": float(np.mean(chosen)) if chosen else None, "n": len(chosen)}

    results = {model: {mode: {b: cell(s, t) for b, t in zip(("easy", "medium", "hard"), thresholds, strict=True)}
                       for mode, s in modes.items()} for model, modes in scores.items()}
    return {"positions": len(doc), "thresholds": thresholds, "split": "test",
            "items": {"doc": doc, "entropy": entropy}, "results": results, "scores": scores}


def hard_run(diff: float, n: int = 100, per_doc: int = 5) -> dict:
    """n hard positions (entropy 2) in documents of ``per_doc``, where RPT reasoning first minus the base's direct
    guess (corpus tokens and plain) is exactly ``diff``: one side scores 1 on round(n·|diff|) positions."""
    k = round(n * abs(diff))
    ones, zeros = [1.0] * k + [0.0] * (n - k), [0.0] * n
    rpt, base = (ones, zeros) if diff >= 0 else (zeros, ones)
    return nt_file([i // per_doc for i in range(n)], [2.0] * n,
                   {"rpt": {"reasoning_greedy": rpt}, "base": {"direct_corpus": base, "direct": base}})


# ---------------------------------------------------------------------------------------------- one run


def test_run_difference_is_the_paired_mean_over_the_bucket():
    # diffs rpt − base per position: [1, 0, −1, 1, 0, 1]; position 5 sits exactly on the hard threshold (1.5)
    ev = nt_file(doc=[0, 0, 1, 2, 2, 2], entropy=[0.7, 1.6, 1.2, 1.8, 0.6, 1.5],
                 scores={"rpt": {"reasoning_greedy": [1, 1, 0, 1, 0, 1]}, "base": {"direct": [0, 1, 1, 0, 0, 0]}})
    mean, docs = run_difference(ev, RPT, BASE, "easy")  # all six: 2 / 6
    assert mean == pytest.approx(1 / 3)
    assert [d.tolist() for d in docs] == [[1, 0], [-1], [1, 0, 1]]  # grouped by document
    mean, docs = run_difference(ev, RPT, BASE, "medium")  # positions 1, 2, 3, 5: (0 − 1 + 1 + 1) / 4
    assert mean == pytest.approx(0.25) and [d.tolist() for d in docs] == [[0], [-1], [1, 1]]
    mean, docs = run_difference(ev, RPT, BASE, "hard")  # positions 1, 3 (1.5 is not > 1.5): (0 + 1) / 2
    assert mean == pytest.approx(0.5) and [d.tolist() for d in docs] == [[0], [1]]
    assert run_difference(ev, BASE, RPT, "hard")[0] == pytest.approx(-0.5)  # a − b, not |a − b|
    assert run_difference(ev, RPT, ("cnt", "reasoning_greedy"), "hard") is None  # missing cell
    empty = nt_file([0, 1], [0.7, 0.8], {"rpt": {"reasoning_greedy": [1, 0]}, "base": {"direct": [0, 0]}})
    assert run_difference(empty, RPT, BASE, "hard") is None  # empty bucket


# ---------------------------------------------------------------------------------------------- statistics


def test_t_interval_over_seeds_matches_hand_computation():
    # mean 0.2, s = sqrt((0.01 + 0.01 + 0) / 2) = 0.1, half = t(0.975, 2) · 0.1 / √3 = 4.302653 · 0.057735 = 0.248414
    mean, (lo, hi) = seed_interval([0.1, 0.3, 0.2])
    assert mean == pytest.approx(0.2) and (hi - lo) / 2 == pytest.approx(0.248414, abs=1e-6)
    assert lo == pytest.approx(0.2 - 0.248414, abs=1e-6)
    # t(0.975, 1) = 12.706205: [0, 1] → mean 0.5, s = 0.7071, half = 12.706205 · 0.5 = 6.353102
    assert seed_interval([0.0, 1.0])[1] == pytest.approx((0.5 - 6.353102, 0.5 + 6.353102), abs=1e-5)
    assert seed_interval([0.3]) == (0.3, None)  # one seed: no seed-level interval
    # the two-sided 97.5% quantiles of the usual table (odd and even df take different series)
    for df, t in ((1, 12.706205), (2, 4.302653), (3, 3.182446), (4, 2.776445), (10, 2.228139), (29, 2.045230)):
        assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-6)
    assert t_quantile(0.99, 5) == pytest.approx(4.032143, abs=1e-6)


def test_t_quantile_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 30, 101):
        for conf in (0.8, 0.95, 0.99):
            assert t_quantile(conf, df) == pytest.approx(stats.t.ppf((1 + conf) / 2, df), rel=1e-9)


def test_cluster_bootstrap_keeps_a_documents_positions_together():
    # doc A: 10 positions at +1, doc B: 1 position at −1. Resampling the two documents gives means
    # +1 (AA, 1/4), 9/11 (AB or BA, 1/2) and −1 (BB, 1/4): the 95% percentile interval is [−1, +1].
    run = [np.ones(10), -np.ones(1)]
    lo, hi = cluster_bootstrap([run], np.random.default_rng(0))
    assert (lo, hi) == (-1.0, 1.0)
    # resampling the 11 positions independently would give k ~ Bin(11, 1/11) at −1, mean 1 − 2k/11, far from −1
    rng = np.random.default_rng(0)
    positions = np.concatenate(run)
    by_position = positions[rng.integers(0, 11, size=(2000, 11))].mean(axis=1)
    assert np.percentile(by_position, 2.5) > 0
    # runs stay fixed and are averaged: a second run at 0 on one document halves the spread
    assert cluster_bootstrap([run, [np.zeros(3)]], np.random.default_rng(0)) == (-0.5, 0.5)
    assert cluster_bootstrap([run], np.random.default_rng(1)) == cluster_bootstrap([run], np.random.default_rng(1))


# ---------------------------------------------------------------------------------------------- headline


def test_headline_includes_zero_when_seeds_disagree():
    # per-seed +0.3, −0.1, +0.2: mean 0.133333, s = sqrt((0.027778 + 0.054444 + 0.004444) / 2) = 0.208167,
    # half = 4.302653 · 0.208167 / √3 = 0.517119 → [−38.4, +65.0] points
    evals = {f"s{i}": hard_run(d) for i, d in enumerate([0.3, -0.1, 0.2])}
    text = paired_headline(evals)
    assert "RPT reasoning first − base direct (corpus tokens): +13.3 points" in text
    assert "+30.0, -10.0, +20.0; RPT above in 2 of 3 runs" in text
    assert "the 95% t-interval over seeds [-38.4, +65.0] includes 0" in text
    assert "apart" not in text and "RPT above." not in text


def test_headline_says_rpt_above_only_when_the_t_interval_excludes_zero():
    # per-seed 0.10, 0.12, 0.11: mean 0.11, s = 0.01, half = 4.302653 · 0.01 / √3 = 0.024841 → [+8.5, +13.5]
    evals = {f"s{i}": hard_run(d) for i, d in enumerate([0.1, 0.12, 0.11])}
    text = paired_headline(evals)
    assert "the 95% t-interval over seeds [+8.5, +13.5] is apart from zero: RPT above." in text
    below = paired_headline({f"s{i}": hard_run(-d) for i, d in enumerate([0.1, 0.12, 0.11])})
    assert "[-13.5, -8.5] is apart from zero: RPT below." in below
    one = paired_headline({"s0": hard_run(0.3)})
    assert "One seed gives no seed-level interval, only the document bootstrap within it" in one
    assert "apart" not in one and "includes 0" not in one


# ---------------------------------------------------------------------------------------------- old files


def test_runs_without_scores_get_a_note_not_a_crash():
    """A next_token.json from before per-position scores: the difference comes from the bucket accuracies (same
    positions, same paired mean), without a document bootstrap; an imported base ("hf") stands in for "base"."""
    def old(rpt_hard, base_hard):
        cell = {"easy": {"accuracy": 0.5, "n": 40}, "medium": {"accuracy": 0.5, "n": 40}}
        return {"positions": 40, "thresholds": THRESHOLDS,
                "results": {"hf": {"direct": {**cell, "hard": {"accuracy": base_hard, "n": 40}}},
                            "rpt": {"reasoning_greedy": {**cell, "hard": {"accuracy": rpt_hard, "n": 40}}}}}

    evals = {"s0": old(0.5, 0.2), "s1": old(0.4, 0.3), "s2": old(0.25, 0.3)}
    table = paired_table(evals)
    assert "No per-position `scores`/`items` in the eval/next_token.json of `s0`, `s1`, `s2`" in table
    # hard: +30, +10, −5 → mean 11.7; s = 0.175594, half = 4.302653 · 0.175594 / √3 = 0.436199 → [−32.0, +55.3]
    row = "| RPT reasoning first − hf direct | hard | `s0` +30.0, `s1` +10.0, `s2` -5.0 | +11.7 | [-32.0, +55.3] |"
    assert row + " – | 3 |" in table  # no document bootstrap without documents
    assert "includes 0" in paired_headline(evals)
    assert "Not compared (no run has both cells):" in table and "RPT direct − hf direct" in table
    assert paired_headline({"s0": {"positions": 0, "thresholds": THRESHOLDS, "results": {}}}).startswith("_no RPT")


# ---------------------------------------------------------------------------------------------- end to end


def test_aggregate_report_has_the_paired_section_and_headline(tmp_path):
    for i, d in enumerate([0.1, 0.12, 0.11]):
        write_json(tmp_path / f"s{i}" / "eval" / "next_token.json", hard_run(d))
        write_json(tmp_path / f"s{i}" / "eval" / "downstream.json",
                   {"task": "chain_sum", "results": {"base": {"greedy": 0.2, "n": 200}}})
    text = build_aggregate_report(tmp_path, ["s0", "s1", "s2"], tmp_path / "agg" / "report", "agg").read_text()
    assert "### Paired differences, seed-level intervals" in text
    assert text.index("### Paired differences") < text.index("### Pooled accuracy") < text.index("Mean ± std over")
    assert "is apart from zero: RPT above." in text and "intervals are apart" not in text
    assert "positions cluster by seed and document: use the paired section for comparisons" in text
    # every position is hard (entropy 2), so every bucket holds the same 100 positions in 20 documents of 5
    row = "| RPT reasoning first − base direct (corpus tokens) | hard | `s0` +10.0, `s1` +12.0, `s2` +11.0 | +11.0 | " \
          "[+8.5, +13.5] | ["
    assert row in text and "| 3 |" in text
    boot = text.split(row)[1].split("]")[0].split(", ")
    lo, hi = float(boot[0]), float(boot[1])
    assert lo < 11.0 < hi and hi - lo < 20  # the documents' spread: ones bunched in the first documents of each run
    assert "No per-position" not in text and "Not compared (no run has both cells)" in text
    assert "RPT reasoning first − CNT reasoning first" in text.split("Not compared")[1]


def test_downstream_pairs_are_differences_per_run_with_a_t_interval():
    from rpt.analysis.paired import downstream_paired_table

    def ds(rl_rpt, rl_pretrain):
        return {"results": {"rl_rpt": {"greedy": rl_rpt, "n": 200}, "rl_pretrain": {"greedy": rl_pretrain, "n": 200}}}

    text = downstream_paired_table({"s0": ds(0.5, 0.4), "s1": ds(0.45, 0.4), "s2": ds(0.4, 0.35)}, ("greedy",))
    # differences 0.10, 0.05, 0.05: mean 0.0667, s = 0.028868, t(0.975, 2) = 4.302653 -> half-width 0.071714
    assert "| RPT → RL − base → RL | greedy | `s0` +10.0, `s1` +5.0, `s2` +5.0 | +6.7 | [-0.5, +13.8] | 3 |" in text
    assert "CNT" not in text  # no run has rl_cnt: not compared
    assert downstream_paired_table({"s0": {"results": {}}}) == "_no pair of downstream checkpoints to compare_"
