"""The RPT prefix-matching reward, answer extraction and the math answer checker: hand-computed cases, a
differential check against the original quadratic extractor, work-counting (timing-free) linearity checks on
degenerate megabyte responses, and a fuzz loop showing the checker always returns a bool."""

import random
import sys

import pytest

from rpt.reward.answer import BOX, extract_answer, extract_boxed
from rpt.reward.math_answer import answers_match, normalize
from rpt.tasks.next_token import prefix_reward

# ground-truth remainder " the cat" tokenised as [" the", " c", "at"]
TARGET = [b" the", b" c", b"at"]


@pytest.mark.parametrize("prediction,expected", [
    (" the", 1.0),            # exactly the next token
    (" the cat", 1.0),        # spans three tokens, ends on a boundary
    (" the c", 1.0),          # two tokens
    ("the", 0.0),             # missing the leading space: not a prefix of the bytes
    (" th", 0.0),             # a prefix, but ends mid-token
    (" the ca", 0.0),         # ends inside "at"
    (" the cat!", 0.0),       # longer than the remainder
    (" the dog", 0.0),        # wrong
    ("", 0.0),                # l = 0 is not a prediction
    (None, 0.0),              # no answer
])
def test_prefix_reward_cases(prediction, expected):
    assert prefix_reward(prediction, TARGET) == expected


def test_prefix_reward_multibyte_unicode():
    # "é" is two UTF-8 bytes; a byte-fallback tokenizer may split it into two tokens
    target = [b"\xc3", b"\xa9t\xc3\xa9"]
    assert prefix_reward("ét\u00e9", target) == 1.0
    assert prefix_reward(b"\xc3", target) == 1.0  # ends on the first token boundary (half a character)
    assert prefix_reward("é", target) == 0.0  # 2 bytes: inside the second token
    assert prefix_reward("数", [b"\xe6\x95\xb0", b"\xe5\xad\xa6"]) == 1.0
    assert prefix_reward("数学", [b"\xe6\x95\xb0", b"\xe5\xad\xa6"]) == 1.0
    assert prefix_reward("\ud800", target) == 0.0 and prefix_reward("é\udc80", target) == 0.0  # lone surrogates


def test_extract_boxed_nested_and_broken():
    assert extract_boxed(r"\boxed{a{b}c}") == "a{b}c"
    assert extract_boxed(r"x \boxed{1} y \boxed{2}") == "2"
    assert extract_boxed(r"\boxed{}") == ""
    assert extract_boxed(r"\boxed{1} \boxed{unclosed") == "1"  # last *balanced* box
    assert extract_boxed("no box") is None


def test_extract_answer_needs_end_of_thinking():
    assert extract_answer(r" 3 + 4 = 7 </think> \boxed{7}") == "7"
    assert extract_answer(r"\boxed{7}") is None  # no end-of-thinking marker
    assert extract_answer(r"\boxed{5} </think> \boxed{7}") == "7"
    assert extract_answer(r" \boxed{5} </think> no answer") is None  # box only inside the thinking
    assert extract_answer(r"</think> \boxed{ 12}") == " 12"  # leading space kept


def test_empty_box_scores_zero():
    assert prefix_reward(extract_answer(r"</think>\boxed{}"), TARGET) == 0.0


def test_optional_format_reward(tokenizer, tmp_path):
    import json

    from rpt.tasks.next_token import NextTokenTask

    target = tokenizer.encode("12\n3 + 4 = 7\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"context": tokenizer.encode("5 + 7 = "), "target": target}) + "\n")
    plain = NextTokenTask(tmp_path / "p.jsonl", tokenizer, "{context}<think>")
    shaped = NextTokenTask(tmp_path / "p.jsonl", tokenizer, "{context}<think>", format_reward=0.1)
    item = plain.items[0]
    assert plain.reward(item, r" 5 + 7 = 12 </think> \boxed{12}") == 1.0
    assert plain.reward(item, r" </think> \boxed{13}") == 0.0
    assert shaped.reward(item, r" </think> \boxed{13}") == pytest.approx(0.1)
    assert shaped.reward(item, r" </think> \boxed{12}") == pytest.approx(1.1)
    assert shaped.reward(item, " no answer") == 0.0
    assert plain.prompt_ids(item) == tokenizer.encode("5 + 7 = ") + tokenizer.encode("<think>")


def test_extract_boxed_nesting_and_stray_braces():
    assert extract_boxed(r"\boxed{1 + \boxed{2}}") == "2"  # the box that opens last wins: the inner one
    assert extract_boxed(r"\boxed{1 \boxed{2}") == "2"  # a closed box inside an unclosed one
    assert extract_boxed(r"\boxed{\boxed{1} \boxed{2") == "1"  # neither the outer nor the last box closes
    assert extract_boxed(r"}} \boxed{1}") == "1"  # a "}" with nothing open is ignored
    assert extract_boxed(r"\boxed{1}} }") == "1"  # extra "}" after a box are outside it
    assert extract_boxed(r"{\boxed{1}") == "1"  # an unclosed plain brace around a closed box
    assert extract_boxed(r"\boxed{a{b}") is None  # the inner brace closes, the box does not
    assert extract_boxed(r"\boxed 1}") is None


def _reference_boxed(text):
    """The original extractor (quadratic: scans from every box start to the end), as the semantics oracle."""
    start = text.rfind(BOX)
    while start != -1:
        depth, i = 1, start + len(BOX)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(BOX):i - 1]
        start = text.rfind(BOX, 0, start)
    return None


def test_extract_boxed_agrees_with_the_original_semantics():
    rng = random.Random(0)
    pieces = [BOX, BOX, "{", "}", "}", "a", " ", "\\", "boxed"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert extract_boxed(text) == _reference_boxed(text), text


def _line_events(fn, arg):
    """(Python line events executed by ``fn(arg)``, its result): the work of a call, counted instead of timed."""
    count = 0

    def local(frame, event, _):
        nonlocal count
        count += event == "line"
        return local

    previous = sys.gettrace()
    sys.settrace(lambda frame, event, _: local)
    try:
        result = fn(arg)
    finally:
        sys.settrace(previous)
    return count, result


DEGENERATE = {  # k -> (text, the answer extract_boxed must give)
    "unclosed boxes": lambda k: (BOX * k, None),
    "unclosed after a balanced box": lambda k: (r"\boxed{1}" + BOX * k, "1"),
    "unclosed boxes holding braces": lambda k: ((BOX + "{}") * k, None),
    "many balanced boxes": lambda k: (r"\boxed{1}" * k, "1"),
    "deep plain nesting": lambda k: (BOX + "{" * k + "x" + "}" * k + "}", "{" * k + "x" + "}" * k),
    "deep box nesting": lambda k: (BOX * k + "x" + "}" * k, "x"),
    "alternating braces": lambda k: ("}{" * k + r"\boxed{1}" + "{}" * k, "1"),
}


@pytest.mark.parametrize("name", DEGENERATE)
def test_extraction_is_linear_on_degenerate_responses(name):
    make = DEGENERATE[name]
    small, large = (_line_events(extract_boxed, make(k)[0])[0] for k in (200, 400))
    assert large < 2.5 * small, (small, large)  # doubling the input at most doubles the work (quadratic: 4x)
    k = 1_000_000 // len(make(1)[0])  # then a megabyte response, which the quadratic scan takes hours on
    text, expected = make(k)
    assert extract_answer("</think>" + text) == expected


def test_normalize_work_does_not_grow_with_wrapper_nesting():
    nested = lambda k: "\\text{" * k + "7" + "}" * k  # noqa: E731
    normalize(nested(1))  # warm the regex caches
    small, large = (_line_events(normalize, nested(k))[0] for k in (1000, 2000))
    assert large <= small, (small, large)  # a bounded number of passes, not one per nesting level
    assert answers_match(nested(3), "7") and not answers_match(nested(200_000), "7")


@pytest.mark.parametrize("prediction, reference, expected", [
    ("1/00", "0", False), ("1/00", "1", False), ("1/00", "1/00", True),  # never a number; equal as text
    ("1e99999999", "1", False), ("1e100", "1" + "0" * 100, True), ("1e-101", "0", False),
    ("1048577", "1048576", False), ("1048576.5", "1048576", False), ("-333333", "-1000000/3", False),
    ("1 2", "12", False), ("1\\,2", "12", False), ("1 2", "1 2", True),
    ("1, 234", "1234", False), ("1, 234", "1,234", False), ("1,234", "1234", True), ("1,  234", "1234", False),
    ("1,000", "1000", True), ("1\\,000", "1000", True), ("1{,}000", "1000", True), ("10 000 000", "10000000", True),
    ("0.5", "1/2", True), ("\\frac{1}{2}", "0.5", True), ("\\frac{1}{0}", "0", False), ("\\frac{1}{00}", "1", False),
    ("0.333333", "\\frac{1}{3}", True), ("0.3333", "1/3", False), ("0.1", "0.1000001", False), ("1e-7", "0", False),
    ("3" + "0" * 60 + "1", "3" + "0" * 61, False), ("3" + "0" * 61, "3e61", True),
    ("9" * 5000, "9" * 5000, True), ("9" * 5000, "9" * 4999 + "8", False), ("1/" + "0" * 5000, "0", False),
])
def test_math_checker_edge_cases(prediction, reference, expected):
    assert answers_match(prediction, reference) is expected


def test_math_checker_returns_a_bool_for_any_input():
    rng = random.Random(0)
    pieces = list("0123456789") + ["/", ".", "e", "E", "-", "+", "{", "}", "\\frac", " ", ",", "%", "\\,", "\\text{"]
    for n in range(600):
        a, b = ("".join(rng.choice(pieces) for _ in range(rng.randint(0, 12 if n < 500 else 3000))) for _ in "ab")
        result = answers_match(a, b)
        assert isinstance(result, bool), (a, b)
        if normalize(a) and normalize(b):
            assert answers_match(b, a) is result, (a, b)
        assert answers_match(a, a) is bool(normalize(a)), a


def test_matched_tokens_counts_the_target_tokens_an_answer_spells():
    from rpt.tasks.next_token import matched_tokens

    target = [b" 1", b"2", b" +", b" 3"]
    assert matched_tokens(" 1", target) == 1
    assert matched_tokens(" 12", target) == 2
    assert matched_tokens(" 12 + 3", target) == 4
    assert matched_tokens(" 12 +", target) == 3
    assert matched_tokens(" 1 2", target) == 0 and matched_tokens(" 12 ", target) == 0  # not a token boundary
    assert matched_tokens("", target) == 0 and matched_tokens(None, target) == 0
    assert matched_tokens(" 12 + 34", target) == 0  # longer than the stored target


def test_one_definition_of_correct_that_a_format_bonus_cannot_reach(tmp_path, tokenizer):
    """``Task.is_correct`` is the verifier's credit above one half, whatever the format bonus: a wrong boxed answer
    under rollout.format_reward=0.6 is not a success (for accuracy, pass@k, refinement, SDPO or gram mining), and
    no other module writes its own threshold."""
    import json
    import re
    from pathlib import Path

    import torch

    from rpt.tasks.next_token import NextTokenTask

    item = {"context": tokenizer.encode("1 + 2 ="), "target": tokenizer.encode(" 3"), "entropy": 1.0}
    (tmp_path / "p.jsonl").write_text(json.dumps(item) + "\n")
    task = NextTokenTask(tmp_path / "p.jsonl", tokenizer, "{context}<think>", format_reward=0.6)
    right, wrong, none = (task.reward(item, text) for text in ("</think> \\boxed{ 3}", "</think> \\boxed{ 4}", "x"))
    assert (right, wrong, none) == (1.6, 0.6, 0.0)
    assert [task.is_correct(r) for r in (right, wrong, none)] == [True, False, False]
    assert task.is_correct(torch.tensor([right, wrong, none])).tolist() == [True, False, False]
    threshold = re.compile(r"(reward|rewards|sampled)\S*\s*(>|<=|>=|<)\s*0(\.5)?\b")
    package = Path(__file__).resolve().parent.parent / "rpt"
    # exempt: the definition itself, and the report's samples, which show rewards as logged (partial credit too)
    exempt = {Path("tasks/base.py"), Path("analysis/samples.py")}
    found = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py")
             if path.relative_to(package) not in exempt
             for n, line in enumerate(path.read_text().splitlines(), 1) if threshold.search(line.split("#")[0])]
    assert found == [], f"thresholds on rewards outside Task.is_correct: {found}"
