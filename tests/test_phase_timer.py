"""The step's phase timer: phases add up over calls, every declared phase is reported, what no phase covers is
``other``, and a nested or undeclared phase is refused (it would be counted twice or lost)."""

import time

import pytest

from rpt.train.phase_timer import PhaseTimer


def test_phases_and_other_add_up_to_the_step():
    timer = PhaseTimer(("a", "b", "never"))
    for _ in range(2):
        with timer.phase("a"):
            time.sleep(0.01)
    time.sleep(0.01)  # in no phase
    with timer.phase("b"):
        time.sleep(0.01)
    m = timer.metrics()
    assert set(m) == {"time/a_s", "time/b_s", "time/never_s", "time/step_s", "time/other_s"}
    assert m["time/a_s"] >= 0.02 and m["time/b_s"] >= 0.01 and m["time/never_s"] == 0.0
    assert m["time/other_s"] >= 0.01
    assert m["time/a_s"] + m["time/b_s"] + m["time/other_s"] == pytest.approx(m["time/step_s"])


def test_nested_and_undeclared_phases_are_refused():
    timer = PhaseTimer(("a", "b"))
    with pytest.raises(KeyError, match="'c' was not declared"), timer.phase("c"):
        pass
    with pytest.raises(RuntimeError, match="opened inside phase 'a'"), timer.phase("a"), timer.phase("b"):
        pass
    with timer.phase("b"):  # the refused nesting left nothing open
        pass
