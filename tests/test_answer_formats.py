"""Answer formats (``rollout.answer_format``): a thinking model's box after ``</think>``, and the box anywhere of a
model that does not think (an instruct model, or a base model prompted to box). Prompts, the stop rule, extraction,
the reward and the no-answer warning follow the one setting; each format is tested on the prompt ids a stage builds
and on the reward of what such a model writes (SmolLM2-Instruct's ``...the next token would be \\boxed{para}.`` got
0 reward forever under the fixed think rule)."""

from __future__ import annotations

import json
import random

import pytest

from rpt import config as schema
from rpt.config_rl import RolloutConfig
from rpt.reward.answer import THINK, AnswerFormat, BoxedAnswerStop, extract_answer
from rpt.rollout.engine import SamplingParams
from rpt.tasks.next_token import NextTokenTask
from rpt.train.no_answer import NoAnswerWatch
from tests.helpers import compose_config

schema.register()
BOXED = AnswerFormat("")
INSTRUCT_REPLY = "The text continues a sentence, so the next token would be \\boxed{ para}."


def _feed(pieces: list[bytes], think_close: str) -> int | None:
    table = dict(enumerate(pieces))
    stop = BoxedAnswerStop(lambda i: table[i], think_close)
    stop.reset(1)
    return next((i for i in range(len(pieces)) if stop.update(0, i)), None)


def test_the_boxed_format_reads_the_last_box_anywhere_and_the_think_format_only_after_the_marker():
    assert BOXED.extract(INSTRUCT_REPLY) == " para"
    assert THINK.extract(INSTRUCT_REPLY) is None  # the old, only rule: no </think>, no answer
    assert BOXED.extract("\\boxed{1} then \\boxed{2}") == "2"
    assert BOXED.extract("no box") is None
    assert THINK.extract("\\boxed{1} </think> \\boxed{2}") == "2" == extract_answer("\\boxed{1} </think> \\boxed{2}")
    assert AnswerFormat("<|end_of_thought|>").extract("a \\boxed{1} <|end_of_thought|> \\boxed{3}") == "3"


@pytest.mark.parametrize("think_close", ["</think>", ""])
def test_the_stop_rule_stops_exactly_when_the_formats_extraction_first_reads_an_answer(think_close):
    fragments = [b"</think>", b"</thi", b"nk>", b"\\boxed{", b"\\box", b"ed{", b"{", b"}", b" ", b"7", b"\\boxed{1}"]
    rng = random.Random(1)
    fired = 0
    for _ in range(5000):
        pieces = [rng.choice(fragments) for _ in range(rng.randint(1, 12))]
        first = next((k for k in range(len(pieces))
                      if extract_answer(b"".join(pieces[:k + 1]).decode(), think_close) is not None), None)
        assert _feed(pieces, think_close) == first, pieces
        fired += first is not None
    assert fired > 500


def test_without_thinking_the_stop_rule_fires_on_the_first_closed_box():
    pieces = [b"so it is ", b"\\boxed{", b" para", b"}", b". More text \\boxed{2}"]
    assert _feed(pieces, "") == 3
    assert _feed(pieces, "</think>") is None


def test_the_setting_reaches_the_sampler_and_is_checked():
    tok = type("T", (), {"token_bytes": staticmethod(lambda i: b""), "eos_id": 0, "pad_id": 0})()
    assert SamplingParams.from_rollout(RolloutConfig(answer_format="boxed"), tok).stop.close == b""
    assert SamplingParams.from_rollout(RolloutConfig(), tok).stop.close == b"</think>"
    with pytest.raises(ValueError, match="answer_format must be one of"):
        RolloutConfig(answer_format="box")
    with pytest.raises(ValueError, match="think_close must not be empty"):
        RolloutConfig(think_close="")


def _positions(tmp_path, tokenizer, context: str, target: str):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"context": tokenizer.encode(context), "target": tokenizer.encode(target),
                                "entropy": 1.0}) + "\n")
    return path


def test_an_instruct_model_is_prompted_in_its_chat_template_and_rewarded_for_its_box(tmp_path):
    """experiment=rpt_instruct: template v0 as the user turn of the model's chat template (ids equal to what
    ``transformers``' ``apply_chat_template`` makes), and a reply that boxes without thinking earns the reward,
    which the think format (R1's preset) denies."""
    transformers = pytest.importorskip("transformers")
    from rpt.tokenizer import HFTokenizer
    from tests.hf_fixtures import make_hf_checkpoint

    ckpt = make_hf_checkpoint(tmp_path / "hf", "llama", "qwen_instruct")
    ours = HFTokenizer(ckpt.path / "tokenizer.json")
    text = "The next token may begin with a space. The"
    cfg = schema.load(compose_config("experiment=rpt_instruct"))
    assert (cfg.rollout.answer_format, cfg.rollout.template, cfg.rollout.chat_template) == ("boxed", "v0", True)
    task = NextTokenTask.from_rollout(_positions(tmp_path, ours, text, " para"), ours, cfg.rollout)
    user = cfg.rollout.templates["v0"].replace("{{", "{").replace("}}", "}").replace("{context}", text)
    theirs = transformers.AutoTokenizer.from_pretrained(ckpt.path)
    expected = theirs.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                          tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    item = task.items[0]
    assert task.prompt_ids(item) == list(expected)
    assert task.reward(item, INSTRUCT_REPLY) == 1.0
    r1 = schema.load(compose_config("experiment=rpt_r1_distill_1_5b"))
    assert r1.rollout.answer_format == "think"
    assert NextTokenTask.from_rollout(task.items, ours, r1.rollout).reward(item, INSTRUCT_REPLY) == 0.0


def test_a_base_model_prompted_as_plain_text_is_rewarded_for_its_box(tmp_path, tokenizer):
    """A base model (no chat template): template v0 as plain text with answer_format=boxed; the prompt ids are the
    template's text around the context's own ids, and a box anywhere is scored."""
    rollout = RolloutConfig(template="v0", answer_format="boxed")
    task = NextTokenTask.from_rollout(_positions(tmp_path, tokenizer, "3 + 4 =", " 7"), tokenizer, rollout)
    item = task.items[0]
    head, _, tail = rollout.templates["v0"].replace("{{", "{").replace("}}", "}").partition("{context}")
    assert task.prompt_ids(item) == tokenizer.encode(head) + item["context"] + tokenizer.encode(tail)
    assert task.reward(item, "The sum comes next: \\boxed{ 7}") == 1.0
    assert task.reward(item, "The sum comes next: \\boxed{ 8}") == 0.0
    assert NextTokenTask.from_rollout(task.items, tokenizer, RolloutConfig(template="v0")).reward(
        item, "The sum comes next: \\boxed{ 7}") == 0.0


def test_the_no_answer_warning_names_the_runs_format():
    watch = NoAnswerWatch("rpt", RolloutConfig(answer_format="boxed", no_answer_warn_steps=1), 5)
    watch.observe(1.0)
    assert "(a \\boxed{})" in watch.warning and "</think>" not in watch.warning
    think = NoAnswerWatch("rpt", RolloutConfig(no_answer_warn_steps=1), 5)
    think.observe(1.0)
    assert "after </think>" in think.warning and "rollout.answer_format=boxed" in think.warning
