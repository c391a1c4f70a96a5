"""The task the RL loop trains on: a sequence of items, each rendered as prompt token ids and scored by a
verifiable reward per response. The base class owns the items and the deterministic per-step order (so a resumed
run draws exactly the items it would have); subclasses say how an item becomes a prompt and how it is scored."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from rpt.reward.answer import THINK, AnswerFormat


class Task(abc.ABC):
    """Items plus ``prompt_ids``/``reward``; ``tokenizer`` is the tokenizer the prompts are encoded with;
    ``chat_template``: prompts are the user turn of the tokenizer's chat template (rollout.chat_template);
    ``answer``: where a response states its answer (``rpt.reward.answer.AnswerFormat``, rollout.answer_format), read
    by ``extract`` for the reward and for everything else that looks at a response's answer.

    A reward is the verifier's credit in [0, 1] plus ``format_reward`` for a parseable answer (0 unless a task
    adds one); ``is_correct`` is the one definition of a right answer (credit above one half) that accuracy,
    pass@k, refinement gates, SDPO's feedback and planning-gram mining all use."""

    format_reward: float = 0.0

    def __init__(self, items: Sequence[Any], tokenizer, chat_template: bool = False, answer: AnswerFormat = THINK):
        self.items = items
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.answer = answer

    def extract(self, response_text: str) -> str | None:
        """The answer ``response_text`` states under the task's answer format (None: none readable)."""
        return self.answer.extract(response_text)

    def is_correct(self, reward):
        """Whether ``reward`` (a float or a tensor of them) is a right answer's: the verifier's credit, the reward
        less any format bonus, above one half."""
        return reward - self.format_reward > 0.5

    def __len__(self) -> int:
        return len(self.items)

    def items_for_step(self, batch_index: int, count: int, seed: int) -> list[Any]:
        """The ``count`` items of batch ``batch_index``: a pure function of (batch_index, count, seed), walking a
        fresh seeded permutation of the items per epoch, so resumes are exact."""
        return [self.items[i] for i in epoch_order(len(self.items), batch_index, count, seed)]

    @abc.abstractmethod
    def prompt_ids(self, item: Any) -> list[int]:
        """The prompt of ``item`` as token ids."""

    @abc.abstractmethod
    def reward(self, item: Any, response_text: str) -> float:
        """The verifiable reward of ``response_text`` as an answer to ``item``."""

    def reference(self, item: Any) -> str:
        """The ground truth of ``item`` as text, for logged samples (the item's ``answer`` field by default)."""
        return str(item["answer"]) if isinstance(item, dict) and "answer" in item else ""

    def answer_length(self, item: Any, answer: str | None) -> int | None:
        """How many ground-truth tokens a correct ``answer`` covers (None where the notion does not apply)."""
        return None


def epoch_order(n: int, step: int, count: int, seed: int) -> list[int]:
    """Indices for ``step``: walk a fresh seeded permutation of range(n) per epoch, ``count`` items per step."""
    import numpy as np

    out = []
    cursor = step * count
    while len(out) < count:
        epoch, offset = divmod(cursor, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(count - len(out), n - offset)
        out += perm[offset:offset + take].tolist()
        cursor += take
    return out


def split_template(template: str, slot: str) -> tuple[str, str]:
    marker = "{" + slot + "}"
    if template.count(marker) != 1:
        raise ValueError(f"prompt template must contain {marker} exactly once: {template!r}")
    before, after = template.split(marker)
    return before.replace("{{", "{").replace("}}", "}"), after.replace("{{", "{").replace("}}", "}")


_CONTEXT_MARK = "\x00rpt-context\x00"  # stands for the context while the chat template renders around it


def chat_frame(tokenizer, before: str, after: str) -> tuple[str, str]:
    """The text around the context once ``before + context + after`` is the user turn of the tokenizer's chat
    template (with the generation prompt): rendered around a marker, then cut there, so the context's ids are
    placed as they are."""
    rendered = tokenizer.chat_prompt(before + _CONTEXT_MARK + after)
    if rendered.count(_CONTEXT_MARK) != 1:
        raise ValueError("the tokenizer's chat template does not place the user message verbatim; cannot put the "
                         "context's token ids into it (use rollout.chat_template=false)")
    head, tail = rendered.split(_CONTEXT_MARK)
    return head, tail


def render_prompt(tokenizer, template: str, context_ids: Sequence[int], chat_template: bool = False) -> list[int]:
    """Template text around the context's own token ids (the context is never re-tokenised). ``chat_template``:
    the template text (context included) is the user message of the tokenizer's chat template, followed by the
    assistant's generation prompt (rollout.chat_template)."""
    before, after = split_template(template, "context")
    if chat_template:
        before, after = chat_frame(tokenizer, before, after)
    return (tokenizer.encode(before) if before else []) + list(context_ids) + (tokenizer.encode(after) if after else [])


def render_text_prompt(tokenizer, text: str, chat_template: bool = False) -> list[int]:
    """A prompt given as text (downstream questions) as ids, as the user turn of the chat template if asked."""
    return tokenizer.encode(tokenizer.chat_prompt(text) if chat_template else text)
