"""Next-token reasoning tasks (RPT): a selected corpus position becomes "reason, then predict what comes next",
verified against the corpus by the prefix-matching reward (arXiv 2506.08007, Eq. 3).

The reward: with B the UTF-8 bytes of the ground-truth remainder (from the selected position on, as far as it was
stored) and L the cumulative byte lengths of its tokens, a prediction ŷ of l bytes earns 1 iff ŷ == B[:l] and
l ∈ L (l = 0 is not a prediction); otherwise 0. A prediction may span several tokens but must end on a
ground-truth token boundary. The prediction is the response's boxed answer (``rpt.reward.answer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rpt.reward.answer import THINK, AnswerFormat
from rpt.rundir import read_jsonl
from rpt.tasks.base import Task, render_prompt


def matched_tokens(prediction: str | bytes | None, target_token_bytes: Sequence[bytes]) -> int:
    """How many target tokens ``prediction`` spells exactly (a non-empty byte prefix of the target ending on a
    token boundary); 0 when it is not such a prefix."""
    if prediction is None:
        return 0
    try:
        pred = prediction.encode("utf-8") if isinstance(prediction, str) else prediction
    except UnicodeEncodeError:  # a lone surrogate: no byte string, so no prefix of the target
        return 0
    if not pred or not b"".join(target_token_bytes).startswith(pred):
        return 0
    boundary = 0
    for count, piece in enumerate(target_token_bytes, 1):
        boundary += len(piece)
        if boundary == len(pred):
            return count
        if boundary > len(pred):
            return 0
    return 0


def prefix_reward(prediction: str | bytes | None, target_token_bytes: Sequence[bytes]) -> float:
    """1.0 iff ``prediction`` is a non-empty byte prefix of the target that ends on one of its token boundaries."""
    return 1.0 if matched_tokens(prediction, target_token_bytes) else 0.0


class NextTokenTask(Task):
    """Items are positions: mappings with ``context`` and ``target`` token ids and the proxy's ``entropy``. Either
    selected positions by reference (``rpt.positions.Positions``: a rank reads an item's tokens from the corpus
    only when it uses the item) or a ``.jsonl`` file of items written out in full (small hand-made tasks)."""

    def __init__(self, positions: Sequence[Mapping] | Path, tokenizer, template: str, format_reward: float = 0.0,
                 chat_template: bool = False, answer: AnswerFormat = THINK):
        items = read_jsonl(positions) if isinstance(positions, str | Path) else positions
        if not len(items):
            raise ValueError(f"no positions in {getattr(positions, 'split', positions)}")
        super().__init__(items, tokenizer, chat_template, answer)
        self.template = template
        self.format_reward = format_reward

    @classmethod
    def from_rollout(cls, positions: Sequence[Mapping] | Path, tokenizer, rollout,
                     format_reward: float = 0.0) -> NextTokenTask:
        """The task prompted as ``rollout`` (the rollout config) says: its named template and, with
        ``rollout.chat_template``, the tokenizer's chat template around it. Every stage builds its task here, so
        a prompt setting reaches training, evaluation and the baselines alike."""
        return cls(positions, tokenizer, rollout.templates[rollout.template], format_reward, rollout.chat_template,
                   AnswerFormat.of(rollout))

    def prompt_ids(self, item: Mapping) -> list[int]:
        return render_prompt(self.tokenizer, self.template, item["context"], self.chat_template)

    def target_bytes(self, item: Mapping) -> list[bytes]:
        return [self.tokenizer.token_bytes(t) for t in item["target"]]

    def reward(self, item: Mapping, response_text: str) -> float:
        answer = self.extract(response_text)
        bonus = self.format_reward if answer else 0.0
        return prefix_reward(answer, self.target_bytes(item)) + bonus

    def reference(self, item: Mapping) -> str:
        """The stored ground-truth continuation as text."""
        return b"".join(self.target_bytes(item)).decode("utf-8", errors="replace")

    def answer_length(self, item: Mapping, answer: str | None) -> int | None:
        """Target tokens a correct boxed answer covers (1 = just the next token); None when it is not correct."""
        return matched_tokens(answer, self.target_bytes(item)) or None
