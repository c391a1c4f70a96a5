"""The task interface the RL loop trains on: prompts as token ids and a verifiable reward per response."""

from __future__ import annotations

from typing import Any, Protocol, Sequence


class Task(Protocol):
    def __len__(self) -> int: ...

    def items_for_step(self, step: int, count: int, seed: int) -> list[Any]:
        """Deterministic items of ``step`` (a pure function of step and seed, so resumes are exact)."""

    def prompt_ids(self, item: Any) -> list[int]: ...

    def reward(self, item: Any, response_text: str) -> float: ...


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


def render_prompt(tokenizer, template: str, context_ids: Sequence[int]) -> list[int]:
    """Template text around the context's own token ids (the context is never re-tokenised)."""
    before, after = split_template(template, "context")
    return (tokenizer.encode(before) if before else []) + list(context_ids) + (tokenizer.encode(after) if after else [])
