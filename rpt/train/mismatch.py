"""Say at once when the rollouts come from another policy than the one trained.

The rollout engine (rpt's lean decoder, or vLLM in another precision or on stale weights) samples each token with
its own log-probability; the trainer recomputes it. ``token_mult_prob_error`` (``rpt.train.rl_metrics``) is their
mean ratio exp(|Δ log p|), 1 when they agree. A step above ``rollout.mismatch_warn`` logs a WARNING (once per stage)
and the stage summary and the report carry it, like the no-answer warning: training on such rollouts is off-policy
by an amount nothing else reports (truncated importance sampling, ``algo.tis_cap``, corrects part of it).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class MismatchWatch:
    def __init__(self, stage: str, rollout_cfg):
        self.stage, self.bound = stage, rollout_cfg.mismatch_warn
        self.worst: float | None = None
        self.warning: str | None = None

    def observe(self, step: int, error: float) -> None:
        """Record one step's ``token_mult_prob_error``; warn once when it exceeds the bound."""
        self.worst = error if self.worst is None else max(self.worst, error)
        if self.warning is None and error > self.bound:
            self.warning = (
                f"{self.stage}: at step {step} the rollout engine's token probabilities differ from the trainer's by "
                f"a mean factor of {error:.3f} (token_mult_prob_error > rollout.mismatch_warn={self.bound}): the "
                f"rollouts come from another policy than the one trained (stale weights in the engine, another "
                f"precision or sampling setting). Check rollout.engine and run.dtype; algo.tis_cap corrects part "
                f"of it.")
            log.warning(self.warning)

    def summary(self) -> dict:
        return {"token_mult_prob_error_max_step": self.worst, "mismatch_warning": self.warning}
