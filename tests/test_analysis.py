"""The entropy-law fit recovers known parameters; the planning-token tagger on hand-made examples."""

import numpy as np
import pytest

from rpt.analysis.entropy_law import fit_and_forecast, fit_entropy_law
from rpt.analysis.planning import planning_mask


def test_law_fit_recovers_known_parameters_under_noise():
    rng = np.random.default_rng(0)
    a, b = 0.35, 0.9
    h = np.linspace(1.2, 0.1, 200)  # entropy falls over training
    r = -a * np.exp(h) + b + rng.normal(0, 0.01, h.size)
    fit = fit_entropy_law(h, r)
    assert fit.a == pytest.approx(a, abs=0.02) and fit.b == pytest.approx(b, abs=0.03)
    assert fit.ceiling == pytest.approx(-a + b, abs=0.03)
    assert fit.r2 > 0.97
    forecast = fit_and_forecast(h, r, fit_fraction=0.2)
    assert forecast["fit_points"] == 40 and forecast["forecast_rmse"] < 0.03


def test_law_fit_rejects_degenerate_input():
    with pytest.raises(ValueError):
        fit_entropy_law([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        fit_entropy_law([0.5, 0.4], [0.1, 0.2])


def test_planning_tagger_marks_tokens_overlapping_grams():
    tokens = [b" 3", b" +", b" 5", b" =", b" 8", b" ", b"</think>", b" \\box", b"ed{", b"8", b"}"]
    flags = planning_mask(tokens, [" = ", "</think>", "\\boxed{"])
    # " = " spans " =" and the leading space of " 8"; "\boxed{" spans " \box" and "ed{"
    assert flags == [False, False, False, True, True, False, True, True, True, False, False]


def test_planning_tagger_natural_language_case_insensitive():
    tokens = [b"So", b" x", b"=2", b".", b" Wait", b",", b" let", b" me", b" check", b":", b" yes"]
    flags = planning_mask(tokens, ["wait", "let me check"])
    assert flags == [False, False, False, False, True, False, True, True, True, False, False]
    assert planning_mask(tokens, []) == [False] * len(tokens)


def test_planning_tagger_lowers_non_ascii_and_keeps_split_characters():
    """``Étape`` is found by the gram ``étape`` and ``ÉTAPE`` by ``Étape`` (non-ASCII capitals lower too); a
    character split across two tokens (byte-level BPE) tags both halves; bytes that are not UTF-8 do no harm."""
    tokens = [b"Donc", b" \xc3", b"\x89tape", b" 2", b":", b" ok", b"\xff"]
    assert planning_mask(tokens, ["étape"]) == [False, True, True, False, False, False, False]
    assert planning_mask([b"\xc3\x89TAPE", b" 3"], ["Étape"]) == [True, False]
    assert planning_mask([b"Stra\xc3\x9fe", b" ok"], ["OK"]) == [False, True]
    assert planning_mask([b"caf\xc3\xa9", b" \xff WAIT"], ["wait"]) == [False, True]


def test_moving_average_is_a_trailing_mean():
    from rpt.analysis.training_curves import moving_average

    steps, values = moving_average(([1, 2, 3, 4], [0.0, 2.0, 4.0, 6.0]), 2)
    assert steps == [1, 2, 3, 4] and values == [0.0, 1.0, 3.0, 5.0]
