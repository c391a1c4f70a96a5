"""Downstream RL tasks from reasoning-gym: procedurally generated questions with the generator's own verifier."""

from __future__ import annotations

import reasoning_gym

from rpt.reward.next_token import extract_answer
from rpt.tasks.base import epoch_order


class ReasoningGymTask:
    def __init__(self, task_cfg, tokenizer, split: str, seed: int):
        size = task_cfg.train_size if split == "train" else task_cfg.test_size
        # train and test use disjoint seeds, so they are independent draws from the generator
        self.dataset = reasoning_gym.create_dataset(task_cfg.task, size=size,
                                                    seed=seed if split == "train" else seed + 7919,
                                                    **dict(task_cfg.task_kwargs))
        self.template = task_cfg.template
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.dataset)

    def items_for_step(self, step: int, count: int, seed: int) -> list[dict]:
        return [self.dataset[i] for i in epoch_order(len(self.dataset), step, count, seed)]

    def prompt_text(self, item: dict) -> str:
        return self.template.format(question=item["question"], **item["metadata"])

    def prompt_ids(self, item: dict) -> list[int]:
        return self.tokenizer.encode(self.prompt_text(item))

    def reward(self, item: dict, response_text: str) -> float:
        answer = extract_answer(response_text)
        if answer is None:
            return 0.0
        return float(self.dataset.score_answer(answer.strip(), item))
