"""Preemption: on SIGUSR1 or SIGTERM a training stage checkpoints at the end of the current step and exits with
``EXIT_REQUEUE``; the Slurm script requeues the job, and the requeued job resumes by itself (finished stages are
skipped, the interrupted one continues from the checkpoint just written).

The handler only sets a flag (signal-safe); the loops poll ``should_stop()`` after each step, which all-reduces the
flag so every rank stops at the same step and writes one consistent checkpoint.
"""

from __future__ import annotations

import logging
import signal

from rpt import checkpoint
from rpt.distributed import world_any

log = logging.getLogger(__name__)

EXIT_REQUEUE = 99  # exit status meaning "checkpointed on a preemption signal: requeue me"
_requested = False


class Preempted(SystemExit):
    def __init__(self, stage: str, step: int):
        super().__init__(EXIT_REQUEUE)
        self.stage, self.step = stage, step


def _handler(signum, frame):
    global _requested
    _requested = True
    log.warning("received %s: will checkpoint after this step and exit for requeue", signal.Signals(signum).name)


def install() -> None:
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, _handler)


def should_stop() -> bool:
    """True on every rank once any rank has received the signal (a world collective: every rank calls it)."""
    return world_any(_requested)


def end_of_step(stage: str, step: int, total: int, every: int, ckpt_dir, trainable, metrics,
                loop_state: dict | None = None) -> None:
    """After ``step`` completed steps: checkpoint ``trainable`` (with the W&B run id of ``metrics`` and the loop's
    ``loop_state``, e.g. a data cursor) when due: every ``every`` steps, at the end, or on a preemption signal; on
    a signal also close ``metrics`` and raise ``Preempted``."""
    stop = should_stop()
    if step % every == 0 or step == total or stop:
        checkpoint.save(ckpt_dir, step, trainable, {"wandb_id": metrics.wandb_id, "loop_state": loop_state or {}})
    if stop:
        metrics.close()
        raise Preempted(stage, step)
