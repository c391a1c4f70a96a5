"""Next-token reasoning tasks (RPT): a selected corpus position becomes "reason, then predict what comes next",
verified against the corpus by the prefix-matching reward (arXiv 2506.08007, Eq. 3).

The reward: with B the UTF-8 bytes of the ground-truth remainder (from the selected position on, as far as it was
stored) and L the cumulative byte lengths of its tokens, a prediction ŷ of l bytes earns 1 iff ŷ == B[:l] and
l ∈ L (l = 0 is not a prediction); otherwise 0. A prediction may span several tokens but must end on a
ground-truth token boundary. The prediction is the response's boxed answer (``rpt.reward.answer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rpt.reward.answer import extract_answer
from rpt.rundir import read_jsonl
from rpt.tasks.base import Task, render_prompt


def prefix_reward(prediction: str | bytes | None, target_token_bytes: Sequence[bytes]) -> float:
    """1.0 iff ``prediction`` is a non-empty byte prefix of the target that ends on one of its token boundaries."""
    if prediction is None:
        return 0.0
    pred = prediction.encode("utf-8") if isinstance(prediction, str) else prediction
    if not pred:
        return 0.0
    remainder = b"".join(target_token_bytes)
    boundary, boundaries = 0, set()
    for piece in target_token_bytes:
        boundary += len(piece)
        boundaries.add(boundary)
    return 1.0 if len(pred) in boundaries and remainder.startswith(pred) else 0.0


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
