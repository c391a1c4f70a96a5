"""The RPT prefix-matching reward and answer extraction, against hand-computed cases."""

import pytest

from rpt.reward.next_token import extract_answer, extract_boxed, prefix_reward

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
