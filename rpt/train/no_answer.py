"""Say loudly when an RL stage cannot learn because its responses state no answer.

A reward needs a parseable answer in the run's answer format (``rollout.answer_format``: ``\\boxed{}`` after
``</think>`` for a thinking model, anywhere for one that does not think; ``rpt.reward.answer``). A model that never
writes that format (a base pretrained from scratch on prose, a template the model does not follow) gets reward 0 on
every rollout, every group is all-equal, and the stage "finishes" having learned nothing. ``NoAnswerWatch`` follows
the per-step ``no_answer_share`` metric and, once its mean over the last ``rollout.no_answer_warn_steps`` steps
(the whole stage when shorter) reaches ``rollout.no_answer_warn_share``, logs a WARNING during training and puts
the message in the stage summary, from where the report shows it at the top.
"""

from __future__ import annotations

import logging
from collections import deque

log = logging.getLogger(__name__)


class NoAnswerWatch:
    def __init__(self, stage: str, rollout_cfg, total_steps: int):
        from rpt.reward.answer import AnswerFormat

        self.stage = stage
        self.format = AnswerFormat.of(rollout_cfg)
        self.threshold = rollout_cfg.no_answer_warn_share
        self.window: deque[float] = deque(maxlen=min(rollout_cfg.no_answer_warn_steps, max(total_steps, 1)))
        self.warning: str | None = None

    @property
    def share(self) -> float | None:
        """Mean no-answer share over the window (None before the first step)."""
        return sum(self.window) / len(self.window) if self.window else None

    def observe(self, share: float) -> None:
        """Record one step's ``no_answer_share``; warn (once) when the full window's mean reaches the threshold."""
        self.window.append(float(share))
        if self.warning is None and len(self.window) == self.window.maxlen and self.share >= self.threshold:
            self.warning = (
                f"{self.stage}: {self.share:.0%} of rollouts over the last {len(self.window)} step(s) state no "
                f"parseable answer ({self.format.describe()}), so their reward is 0 and the stage learns next to "
                f"nothing. The model does not write the answer format: pick the format it writes "
                f"(rollout.answer_format=boxed for a model that boxes without thinking), start from a reasoning model "
                f"(hf_import, rpt.init_from=hf), use a prompt it follows (rollout.template, rollout.max_new_tokens), "
                f"or train the base on text that contains the format.")
            log.warning(self.warning)

    def summary(self) -> dict:
        return {"no_answer_share_last": self.share, "no_answer_warning": self.warning}
