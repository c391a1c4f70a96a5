"""The answer-complete stop rule, fed token by token with markers split across tokens."""

from rpt.reward.answer import BoxedAnswerStop


def _feed(pieces: list[bytes]) -> int | None:
    """Index of the piece at which the detector fires (None if never)."""
    table = dict(enumerate(pieces))
    stop = BoxedAnswerStop(lambda i: table[i])
    stop.reset(1)
    for i in range(len(pieces)):
        if stop.update(0, i):
            return i
    return None


def test_stops_when_box_after_think_closes():
    assert _feed([b" 3 + 4 = 7 ", b"</think>", b" \\box", b"ed{", b"7", b"}", b" 7\n"]) == 5


def test_box_inside_thinking_does_not_stop():
    assert _feed([b" \\boxed{1}", b" </th", b"ink>", b" \\boxed{", b"2", b"}"]) == 5


def test_nested_braces_wait_for_the_outer_close():
    assert _feed([b"</think>\\boxed{\\frac{1}", b"{3}", b"}", b"x"]) == 2


def test_never_fires_without_answer():
    assert _feed([b"</think> no box at all", b" }"]) is None
