"""Downstream RL tasks from reasoning-gym: procedurally generated questions with the generator's own verifier.

One generator (``rl_task.task`` with ``task_kwargs``) or a weighted mixture (``rl_task.mix``), which is
reasoning-gym's own composite dataset: it samples a generator per question and routes scoring to it.
"""

from __future__ import annotations

import reasoning_gym

from rpt.reward.answer import THINK, AnswerFormat
from rpt.tasks.base import Task, render_text_prompt
from rpt.tasks.filters import in_pool, uses_only


def _mixture(mix) -> list:
    from reasoning_gym.composite import DatasetSpec

    specs = []
    for name, spec in mix.items():
        args = dict(spec)
        if "weight" not in args:
            raise ValueError(f"rl_task.mix.{name} needs a weight, e.g. rl_task.mix.{name}.weight=1")
        weight = float(args.pop("weight"))
        specs.append(DatasetSpec(name=name, weight=weight, config=args))
    return specs


class ReasoningGymTask(Task):
    def __init__(self, task_cfg, tokenizer, split: str, seed: int, chat_template: bool = False,
                 answer: AnswerFormat = THINK):
        size = task_cfg.train_size if split == "train" else task_cfg.test_size
        if task_cfg.mix and task_cfg.operators is not None:
            raise ValueError("rl_task.operators filters one chain_sum-like task; set rl_task.operators=null with "
                             "rl_task.mix")
        # train and test read the generator's stream at different offsets; that keeps the lists apart by position
        # only (item i of seed s is item i + (s - t) of seed t), so with rl_task.heldout_share they are also split
        # by content: test questions from the held-out problems, training questions from the rest
        share = task_cfg.heldout_share
        pool = size * (1 if task_cfg.operators is None else 16)
        pool = pool if share is None else int(pool / (share if split == "test" else 1 - share)) + 64
        split_seed = seed if split == "train" else seed + 7919
        if task_cfg.mix:
            self.dataset = reasoning_gym.create_dataset("composite", size=pool, seed=split_seed,
                                                        datasets=_mixture(task_cfg.mix))
        else:
            self.dataset = reasoning_gym.create_dataset(task_cfg.task, size=pool, seed=split_seed,
                                                        **dict(task_cfg.task_kwargs))
        wanted = "heldout" if split == "test" else "train"
        items = [e for e in self.dataset if self._allowed(e, task_cfg.operators)
                 and (share is None or in_pool(self._expression(e), share, wanted))][:size]
        if len(items) < size:
            raise ValueError(f"rl_task: only {len(items)} of {size} {task_cfg.task} {split} questions use operators "
                             f"{task_cfg.operators}" + ("" if share is None else f" in the {wanted} problems"))
        super().__init__(items, tokenizer, chat_template, answer)
        self.template = task_cfg.template

    @staticmethod
    def _expression(entry: dict) -> str:
        expression = entry.get("metadata", {}).get("expression")
        if expression is None:
            raise ValueError("rl_task.operators and rl_task.heldout_share need a task whose entries carry "
                             "metadata.expression (e.g. chain_sum); set them to null for other tasks")
        return expression

    @classmethod
    def _allowed(cls, entry: dict, operators) -> bool:
        return operators is None or uses_only(cls._expression(entry), operators)

    def prompt_text(self, item: dict) -> str:
        return self.template.format(question=item["question"], **item["metadata"])

    def prompt_ids(self, item: dict) -> list[int]:
        return render_text_prompt(self.tokenizer, self.prompt_text(item), self.chat_template)

    def reward(self, item: dict, response_text: str) -> float:
        answer = self.extract(response_text)
        if answer is None:
            return 0.0
        return float(self.dataset.score_answer(answer.strip(), item))
