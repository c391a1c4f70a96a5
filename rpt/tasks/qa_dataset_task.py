"""Downstream RL on a question/answer dataset (GSM8K, MATH, OmniMATH, or your own jsonl/parquet) loaded through
``datasets``, verified by the math answer checker in ``rpt.reward.math_answer``.

The response's final answer is the last ``\\boxed{}`` after the end of thinking (the same parse as every other
task); the reference is taken from ``answer_field`` (GSM8K ``####`` and MATH ``\\boxed{}`` solutions included).
Records with an empty question or answer are counted and skipped, never fatal.
"""

from __future__ import annotations

import logging

from rpt.reward.answer import THINK, AnswerFormat
from rpt.reward.math_answer import answers_match, reference_answer
from rpt.sources import local_files
from rpt.tasks.base import Task, render_text_prompt

log = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_qa_records(qa_cfg, split: str):
    """The records of one split: a local file glob (its split name is ignored: pass a slice such as
    ``train[:80%]`` to carve train and test from one file) or a hub dataset split."""
    import datasets

    if not qa_cfg.path:
        raise ValueError("rl_task.source=dataset needs rl_task.dataset.path (a hub name or local files)")
    local = local_files(qa_cfg.path, _BUILDERS, "rl_task.dataset.path")
    if local:
        files, ext = local
        split = "train" + split[split.index("["):] if "[" in split else "train"
        return datasets.load_dataset(_BUILDERS[ext], data_files=files, split=split)
    return datasets.load_dataset(qa_cfg.path, qa_cfg.name, split=split)


class QADatasetTask(Task):
    def __init__(self, task_cfg, tokenizer, split: str, seed: int, chat_template: bool = False,
                 answer_format: AnswerFormat = THINK):
        qa = task_cfg.dataset
        records = load_qa_records(qa, qa.train_split if split == "train" else qa.test_split)
        missing = {qa.question_field, qa.answer_field} - set(records.column_names)
        if missing:
            raise ValueError(f"rl_task.dataset: fields {sorted(missing)} not in {records.column_names}")
        size = task_cfg.train_size if split == "train" else task_cfg.test_size
        items, skipped = [], 0
        for record in records:
            question, answer = record[qa.question_field], record[qa.answer_field]
            if not isinstance(question, str) or not question.strip() or answer is None or not str(answer).strip():
                skipped += 1
                continue
            items.append({"question": question.strip(), "answer": reference_answer(str(answer))})
            if len(items) == size:
                break
        if skipped:
            log.warning("rl_task.dataset: skipped %d records with an empty question or answer", skipped)
        if not items:
            raise ValueError(f"rl_task.dataset: no usable question in split {split!r} of {qa.path}")
        if "{question}" not in task_cfg.template:
            raise ValueError(f"rl_task.template must contain {{question}} for a dataset task: {task_cfg.template!r}")
        super().__init__(items, tokenizer, chat_template, answer_format)
        self.template = task_cfg.template

    def prompt_text(self, item: dict) -> str:
        return self.template.format(question=item["question"])

    def prompt_ids(self, item: dict) -> list[int]:
        return render_text_prompt(self.tokenizer, self.prompt_text(item), self.chat_template)

    def reward(self, item: dict, response_text: str) -> float:
        return float(answers_match(self.extract(response_text), item["answer"]))
