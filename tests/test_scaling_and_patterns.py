"""The report's compute-scaling fit P(C) = A / C^α + P*, the marking of fits that say nothing, and the reasoning
patterns counted by keyword rules."""

from __future__ import annotations

import numpy as np
import pytest

from rpt.analysis import fits
from rpt.analysis.reasoning_patterns import DIRECT, pattern_shares, patterns_of, rules_markdown
from rpt.analysis.scaling import fit_power_law, scaling_points, scaling_section


def test_power_law_fit_recovers_its_parameters():
    compute = np.geomspace(2e3, 5e5, 12)
    acc = -1.5 * compute ** -0.3 + 0.7
    fit = fit_power_law(compute, acc)
    assert fit.alpha == pytest.approx(0.3, rel=0.01) and fit.p_star == pytest.approx(0.7, abs=0.005)
    assert fit.A == pytest.approx(-1.5, rel=0.05) and fit.r2 > 0.999 and fit.n == 12 and fit.informative
    np.testing.assert_allclose(fit.predict(compute), acc, atol=1e-3)
    noisy = acc + np.random.default_rng(0).normal(0, 0.05, len(acc))
    assert fit_power_law(compute, noisy).r2 < 0.9
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([0, 10, 20], [0.1, 0.2, 0.3])  # compute 0 cannot be on a power law
    with pytest.raises(ValueError, match="same compute"):
        fit_power_law([5, 5, 5], [0.1, 0.2, 0.3])


def test_power_law_fits_that_the_data_do_not_determine_are_marked():
    compute = np.geomspace(1e3, 1e5, 12)
    step = np.where(compute > 1.5e3, 0.4, 0.6)  # one high point, then flat: the best α runs to its bound
    fit = fit_power_law(compute, step)
    assert fit.r2 > 0.99 and not fit.informative and "end of its search range" in fit.degenerate
    falling = 0.3 + 2.0 * compute ** -0.3  # accuracy that falls with compute
    fit = fit_power_law(compute, falling)
    assert fit.A > 0 and fit.r2 > 0.99 and fit.degenerate == "accuracy falls with compute (A > 0)"
    assert "accuracy falls" in fits.verdict(fit.r2, fit.n, fit.degenerate)


def test_fits_with_few_points_or_low_r2_are_not_informative():
    assert fits.verdict(0.95, 12) == "" and fits.informative(0.95, 12)
    few = fits.verdict(0.99, 6)
    assert "Not informative" in few and "n = 6 < 8" in few and "R²" not in few
    low = fits.verdict(0.10, 6)
    assert "n = 6 < 8" in low and "R² = 0.10 < 0.5" in low


def _rows(accuracy_of_step, steps=24, every=2, tokens=1000.0):
    rows = []
    for step in range(steps):
        row = {"stage": "rpt", "step": step, "rollout_tokens": tokens}
        if (step + 1) % every == 0:
            for bucket, scale in (("easy", 1.0), ("medium", 0.8), ("hard", 0.5)):
                row[f"val/accuracy_{bucket}"] = scale * accuracy_of_step(step)
        rows.append(row)
    return rows


def test_scaling_section_fits_each_bucket_and_marks_what_says_nothing(tmp_path):
    rows = _rows(lambda s: 0.6 - 0.5 * (1000.0 * (s + 1)) ** -0.4 * 10)
    points = scaling_points(rows)
    assert points["hard"][0][:2] == [2000.0, 4000.0] and len(points["hard"][0]) == 12  # cumulative tokens
    text, images = scaling_section(rows, "rpt", tmp_path)
    assert images == ["rpt_scaling.png"] and (tmp_path / "rpt_scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "rpt_scaling.json").is_file()
    for bucket in ("easy", "medium", "hard"):
        line = next(x for x in text.splitlines() if x.startswith(f"| {bucket} |"))
        assert "| 12 |" in line and line.endswith("| informative |"), line
    flat, _ = scaling_section(_rows(lambda s: 0.3 + 0.05 * (-1) ** s, steps=8), "rpt", tmp_path)
    assert "Not informative" in flat and "n = 4 < 8" in flat
    assert scaling_section([{"stage": "rpt", "step": 0, "reward_mean": 0.1}], "rpt", tmp_path) == ("", [])


def test_reasoning_patterns_by_keyword_rules():
    assert patterns_of("<think> 15 + 9 = 24 </think> \\boxed{24}") == ["deduction"]
    assert set(patterns_of("<think> 7 + 8 = 15 + 9 = 24 </think> \\boxed{24}")) == {"deduction", "breakdown"}
    assert patterns_of("<think> </think> \\boxed{24}") == [DIRECT]
    assert patterns_of("\\boxed{7}") == [DIRECT]
    assert "checking" in patterns_of("<think> 3 + 4 = 7, check: 7 - 4 = 3 </think> \\boxed{7}")
    assert "hypothesis" in patterns_of("Suppose the next word is 'cat'. </think> \\boxed{ cat}")
    assert "= 9" not in patterns_of("</think> 4 + 5 = 9")  # only the text before the marker counts
    assert patterns_of("</think> 4 + 5 = 9") == [DIRECT]
    shares = pattern_shares(["<think> 1 + 2 = 3 </think>", "<think> </think>", "<think> 1 = 1 = 1 </think>",
                             "<think> wait </think>"])
    assert shares["deduction"] == 0.5 and shares[DIRECT] == 0.25 and shares["breakdown"] == 0.25
    assert shares["checking"] == 0.25 and pattern_shares([]) == {}
    assert "`=|" in rules_markdown() and "direct" in rules_markdown()
