"""Next-token reasoning tasks (RPT): a selected corpus position becomes "reason, then predict what comes next",
verified against the corpus by the prefix-matching reward."""

from __future__ import annotations

from pathlib import Path

from rpt.reward.answer import extract_answer
from rpt.reward.next_token import prefix_reward
from rpt.rundir import read_jsonl
from rpt.tasks.base import Task, render_prompt


class NextTokenTask(Task):
    def __init__(self, positions_file: Path, tokenizer, template: str, format_reward: float = 0.0):
        items = read_jsonl(positions_file)
        if not items:
            raise ValueError(f"no positions in {positions_file}")
        super().__init__(items, tokenizer)
        self.template = template
        self.format_reward = format_reward

    def prompt_ids(self, item: dict) -> list[int]:
        return render_prompt(self.tokenizer, self.template, item["context"])

    def target_bytes(self, item: dict) -> list[bytes]:
        return [self.tokenizer.token_bytes(t) for t in item["target"]]

    def reward(self, item: dict, response_text: str) -> float:
        answer = extract_answer(response_text)
        bonus = self.format_reward if answer else 0.0
        return prefix_reward(answer, self.target_bytes(item)) + bonus
