"""Downstream tasks: the math answer checker against hand-decided pairs, a question/answer dataset task from local
jsonl and parquet files (bad records skipped), and a reasoning-gym mixture scored by each generator's verifier."""

from __future__ import annotations

import json

import pytest

from rpt import config as schema
from rpt.reward.math_answer import answers_match, reference_answer
from rpt.tasks.downstream import build_downstream_task
from tests.helpers import compose_config

schema.register()


@pytest.mark.parametrize("prediction, reference", [
    ("42", "42"), ("42.0", "42"), ("1,000", "1000"), ("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{4}", "3/4"),
    ("-\\frac{2}{4}", "-0.5"), ("\\frac12", "1/2"), ("$18$", "18"), ("18.", "18"), ("\\text{(B)}", "(B)"),
    ("25\\%", "25"), ("90^\\circ", "90"), ("x^2 + 1", "x^2+1"), ("\\left(1, 2\\right)", "(1,2)"),
    ("+7", "7"), ("10 \\text{ cm}", "10cm"),
])
def test_equivalent_answers_match(prediction, reference):
    assert answers_match(prediction, reference)


@pytest.mark.parametrize("prediction, reference", [
    ("41", "42"), ("0.5001", "0.5"), ("\\frac{1}{3}", "0.33"), ("x^2", "x^3"), ("", "0"), (None, "1"),
    ("12", "1,2"), ("1/0", "0"), ("(1,2)", "(2,1)"),
])
def test_different_answers_do_not_match(prediction, reference):
    assert not answers_match(prediction, reference)


def test_reference_answer_extraction():
    assert reference_answer("She pays 3 * 4 = <<3*4=12>>12 dollars.\n#### 12") == "12"
    assert reference_answer("So the area is $\\boxed{\\frac{\\sqrt{3}}{2}}$.") == "\\frac{\\sqrt{3}}{2}"
    assert reference_answer(" 7 ") == "7"


def _cfg(overrides):
    return compose_config("experiment=smoke", *overrides)


def _write_qa(tmp_path, fmt):
    records = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(6)]
    records.insert(2, {"question": "", "answer": "#### 1"})  # empty question: skipped
    records.insert(4, {"question": "No answer?", "answer": ""})  # empty answer: skipped
    if fmt == "jsonl":
        path = tmp_path / "qa.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "qa.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_qa_dataset_task_from_local_files(tmp_path, tokenizer, fmt):
    path = _write_qa(tmp_path, fmt)
    cfg = _cfg(["rl_task.source=dataset", f"rl_task.dataset.path={path}", "rl_task.template='{question} <think>'",
                "rl_task.train_size=100"])
    task = build_downstream_task(cfg.rl_task, tokenizer, "train", 0)
    assert len(task) == 6  # two bad records skipped
    item = task.items[3]
    assert item == {"question": "What is 3 + 3?", "answer": "6"}
    assert tokenizer.decode(task.prompt_ids(item)) == "What is 3 + 3? <think>"
    assert task.reward(item, " 3 + 3 </think> \\boxed{6}") == 1.0
    assert task.reward(item, " 3 + 3 </think> \\boxed{6.0}") == 1.0
    assert task.reward(item, " 3 + 3 </think> \\boxed{7}") == 0.0
    assert task.reward(item, " \\boxed{6}") == 0.0  # no end of thinking: no answer
    sliced = build_downstream_task(_cfg(["rl_task.source=dataset", f"rl_task.dataset.path={path}",
                                         "rl_task.template='{question} <think>'",
                                         "rl_task.dataset.test_split='train[-3:]'"]
                                        ).rl_task, tokenizer, "test", 0)
    assert [it["answer"] for it in sliced.items] == ["6", "8", "10"]


def test_qa_dataset_task_errors_name_the_problem(tmp_path, tokenizer):
    path = _write_qa(tmp_path, "jsonl")
    with pytest.raises(ValueError, match="prompt|problem"):
        build_downstream_task(_cfg(["rl_task.source=dataset", f"rl_task.dataset.path={path}",
                                    "rl_task.template='{question} <think>'", "rl_task.dataset.question_field=problem"]
                                   ).rl_task, tokenizer, "train", 0)
    with pytest.raises(ValueError, match="question"):
        build_downstream_task(_cfg(["rl_task.source=dataset", f"rl_task.dataset.path={path}"]).rl_task,
                              tokenizer, "train", 0)
    with pytest.raises(ValueError, match="matches no file"):
        build_downstream_task(_cfg(["rl_task.source=dataset", f"rl_task.dataset.path={tmp_path}/none.jsonl"]
                                   ).rl_task, tokenizer, "train", 0)


def test_reasoning_gym_mixture_scores_with_each_generator(tokenizer):
    cfg = _cfg(["rl_task.operators=null", "rl_task.template='{question} <think>'", "rl_task.train_size=40",
                "+rl_task.mix.chain_sum={weight:1,min_terms:2,max_terms:2}",
                "+rl_task.mix.basic_arithmetic={weight:1}"])
    task = build_downstream_task(cfg.rl_task, tokenizer, "train", 0)
    sources = {it["metadata"]["source_dataset"] for it in task.items}
    assert sources == {"chain_sum", "basic_arithmetic"}
    for item in task.items[:10]:
        assert task.reward(item, f"</think> \\boxed{{{item['answer']}}}") == 1.0
        assert task.reward(item, "</think> \\boxed{not a number}") == 0.0
    with pytest.raises(ValueError, match="operators"):
        build_downstream_task(_cfg(["+rl_task.mix.chain_sum={weight:1}"]).rl_task, tokenizer, "train", 0)


@pytest.mark.parametrize("source", ["reasoning_gym", "dataset"])
def test_chat_template_makes_each_question_the_user_turn(tmp_path, source):
    """rollout.chat_template reaches the downstream tasks too (rl and eval pass it): the prompt is the tokenizer's
    chat template around the question text, exactly what the tokenizer renders; off, the plain text."""
    from rpt.tokenizer import load_tokenizer
    from tests.hf_fixtures import write_tokenizer

    write_tokenizer(tmp_path / "tok", "r1")
    tok = load_tokenizer(tmp_path / "tok")
    overrides = ["rl_task.train_size=4"]
    if source == "dataset":
        path = tmp_path / "qa.jsonl"
        path.write_text("".join(json.dumps({"question": f"{a} + 1 =", "answer": str(a + 1)}) + "\n" for a in range(4)))
        overrides = ["rl_task.source=dataset", f"rl_task.dataset.path={path}", "rl_task.dataset.test_split=train",
                     "rl_task.template='{question} <think>'"]
    cfg = _cfg(overrides).rl_task
    plain = build_downstream_task(cfg, tok, "train", 0)
    chat = build_downstream_task(cfg, tok, "train", 0, chat_template=True)
    item = plain.items[0]
    assert plain.prompt_ids(item) == tok.encode(plain.prompt_text(item))
    assert chat.prompt_ids(item) == tok.encode(tok.chat_prompt(plain.prompt_text(item))) != plain.prompt_ids(item)


def test_heldout_share_splits_train_and_test_questions_by_content(tokenizer):
    """Draws at two stream offsets share questions (reasoning-gym's seeds shift one stream); with
    rl_task.heldout_share every test question comes from the held-out problems and none is a training question."""
    from rpt.tasks.filters import problem_pool

    def expressions(share, split):
        cfg = schema.RLTaskConfig(train_size=2000, test_size=200, heldout_share=share)
        return [e["metadata"]["expression"] for e in build_downstream_task(cfg, tokenizer, split, 0).items]

    assert set(expressions(None, "test")) & set(expressions(None, "train"))  # the overlap the option removes
    train, test = expressions(0.25, "train"), expressions(0.25, "test")
    assert len(test) == 200 and len(train) == 2000 and not set(test) & set(train)
    assert {problem_pool(e, 0.25) for e in test} == {"heldout"}
    assert {problem_pool(e, 0.25) for e in train} == {"train"}  # 4-term questions: none shared
