"""Preemption and the time budget: a training stage checkpoints at the end of the current step and exits with
``EXIT_REQUEUE`` when a rank receives SIGUSR1 or SIGTERM (or, in a training loop, Ctrl-C: a second one exits at
once), or when the job's time is nearly spent; the Slurm script requeues the job, and the requeued job resumes by
itself (finished stages are skipped, the interrupted one continues from the checkpoint just written).

In a task of the Hydra/submitit launcher (``hydra/launcher=rpt_slurm``) submitit's warning signal (USR2) is one
of these signals too, and the job requeues itself instead of relying on a job script (rpt/train/submitit_job.py).

The handlers are installed first thing (``python -m rpt.cli`` does it before its imports, which take seconds): a
signal during start-up sets the flag, and the first training step then ends in a checkpoint, instead of the
default action killing the task. This module therefore imports nothing heavy at the top.

The signal handler only sets a flag (signal-safe). After each step the loop calls ``end_of_step``, which
all-reduces "signalled or out of time" once, so every rank stops at the same step and writes one consistent
checkpoint. Before exiting, the main rank writes the requeue marker named by ``RPT_REQUEUE_MARKER`` (the Slurm
script sets it), so the script requeues even when the launcher's exit status is not ours (srun reports the worst
status of its tasks, and a task killed while the others exit would hide the 99).

The time budget (``run.save_before_minutes``): the job's end comes from ``RPT_DEADLINE`` (unix seconds, set by
hand or by a launcher) or else Slurm's ``SLURM_JOB_END_TIME``. It is read from the environment, never from the
config, because it belongs to one launch: a requeued job has a new end time, and the run directory's saved config
must not carry the old one. After each step, when less than ``save_before_minutes`` plus the longest step so far
remain, the stage checkpoints and exits for requeue — for steps that take minutes, Slurm's USR1 warning (120 s)
comes too late. At least one step runs per launch, so a budget larger than the job's time limit cannot requeue a
job forever without progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

EXIT_REQUEUE = 99  # exit status meaning "checkpointed on a preemption signal or the time budget: requeue me"
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once (128 + SIGINT, as a shell reports it)
DEADLINE_ENV = ("RPT_DEADLINE", "SLURM_JOB_END_TIME")  # where the job's end time is read, first found wins
MARKER_ENV = "RPT_REQUEUE_MARKER"  # file the main rank writes before exiting for requeue (set by the job script)
_requested = False
_received: list[str] = []  # names of the signals received, in order


class Preempted(SystemExit):
    def __init__(self, stage: str, step: int, reason: str = "a preemption signal"):
        super().__init__(EXIT_REQUEUE)
        self.stage, self.step, self.reason = stage, step, reason


def _handler(signum, frame):
    global _requested
    _requested = True
    _received.append(signal.Signals(signum).name)
    log.warning("received %s: will checkpoint after this step and exit for requeue", signal.Signals(signum).name)


def _signals() -> list[signal.Signals]:
    """USR1 and TERM; in a task of a hydra-submitit job also submitit's warning signal (USR2), which rpt then
    handles instead of submitit (rpt/train/submitit_job.py)."""
    from rpt.train import submitit_job

    return [signal.SIGUSR1, signal.SIGTERM] + ([submitit_job.preempt_signal()] if submitit_job.active() else [])


def install() -> None:
    for sig in _signals():
        signal.signal(sig, _handler)


def uninstall() -> None:
    """Back to the default actions (a process that trains nothing, e.g. a sweep's launcher, dies of them)."""
    for sig in _signals():
        signal.signal(sig, signal.SIG_DFL)


def exiting() -> None:
    """Ignore the signals from here on: the call's work is over and the process only exits (``rpt.cli.main``
    registers this with ``atexit``). CPython's finalization resets every handler set from Python to the default
    action, but leaves SIG_IGN alone: a USR1 or TERM that landed then killed a task whose stage had finished with
    status 138/143, which the job script took for a signal during start-up and requeued. Ignored, the task exits
    with its own status (there is nothing left to checkpoint)."""
    if threading.current_thread() is threading.main_thread():
        for sig in _signals():
            signal.signal(sig, signal.SIG_IGN)


def timed_out(stop: Preempted) -> bool:
    """Whether ``stop`` came from the job's time limit: submitit's warning signal or the time budget."""
    from rpt.train import submitit_job

    return stop.reason.startswith("the time budget") or submitit_job.preempt_signal().name in _received


def _interrupt(signum, frame):
    if _requested:  # the second Ctrl-C: the user does not want to wait for the step to end
        log.warning("second Ctrl-C: exiting now, without a checkpoint")
        logging.shutdown()
        os._exit(EXIT_INTERRUPTED)
    _handler(signum, frame)


@contextlib.contextmanager
def ctrl_c_checkpoints() -> Iterator[None]:
    """Inside a training loop, Ctrl-C (SIGINT) is a preemption signal: checkpoint after this step and exit for
    requeue, on every rank alike; a second Ctrl-C exits at once. Outside it, Ctrl-C interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def should_stop(out_of_time: bool = False) -> bool:
    """True on every rank once any rank has received the signal or is ``out_of_time`` (a world collective: every
    rank calls it)."""
    from rpt.distributed import world_any

    return world_any(_requested or out_of_time)


def job_deadline(environ=os.environ) -> float | None:
    """The job's end as unix seconds: ``RPT_DEADLINE``, else ``SLURM_JOB_END_TIME``, else None (no known end)."""
    for name in DEADLINE_ENV:
        value = environ.get(name, "").strip()
        if value:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a time: give the job's end as unix seconds, "
                                 "e.g. RPT_DEADLINE=$(date -d '+6 hours' +%s)") from None
    return None


@dataclass
class TimeBudget:
    """Stop early enough to save: out of time once ``deadline`` is less than ``reserve_s`` plus the longest step
    run so far away."""

    deadline: float | None  # unix seconds of the job's end; None: no budget
    reserve_s: float  # seconds kept for the last checkpoint and exit (run.save_before_minutes * 60)
    longest_step_s: float = 0.0  # the longest step this process has run

    @classmethod
    def from_run(cls, run_cfg) -> TimeBudget:
        reserve_s = run_cfg.save_before_minutes * 60
        deadline = job_deadline() if reserve_s > 0 else None
        if deadline is not None:
            log.info("time budget: the job ends at %s; checkpointing and exiting for requeue when less than %.1f "
                     "min plus one step remain", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deadline)),
                     run_cfg.save_before_minutes)
        elif reserve_s > 0:
            log.warning("run.save_before_minutes=%s but the job's end is unknown (set %s or run under Slurm): no "
                        "time budget", run_cfg.save_before_minutes, " or ".join(DEADLINE_ENV))
        return cls(deadline, reserve_s)

    def step_done(self, seconds: float) -> None:
        self.longest_step_s = max(self.longest_step_s, seconds)

    def out_of_time(self, now: float | None = None) -> bool:
        if self.deadline is None or self.longest_step_s == 0.0:  # no budget, or no step run yet in this launch
            return False
        left = self.deadline - (time.time() if now is None else now)
        if left < self.reserve_s + self.longest_step_s:
            log.warning("time budget: %.0f s left, keeping %.0f s for the save plus %.0f s for a step: "
                        "checkpointing now and exiting for requeue", left, self.reserve_s, self.longest_step_s)
            return True
        return False


def _write_requeue_marker(stage: str, step: int, is_main: bool) -> None:
    from rpt.distributed import barrier
    from rpt.rundir import write_json

    marker = os.environ.get(MARKER_ENV)
    if marker and is_main:
        write_json(marker, {"stage": stage, "step": step, "time": time.time()})
    barrier()  # the marker exists before any rank exits (a launcher may kill the rest when the first one exits)


def end_of_step(stage: str, step: int, total: int, every: int, ckpt_dir, trainable, metrics,
                loop_state: dict | None = None, budget: TimeBudget | None = None, is_main: bool = True,
                keep_steps=()) -> None:
    """After ``step`` completed steps: checkpoint ``trainable`` (with the W&B run id of ``metrics`` and the loop's
    ``loop_state``, e.g. a data cursor) when due: every ``every`` steps, at each of ``keep_steps`` (kept for good),
    at the end, on a preemption signal or when the time ``budget`` runs out; on those two also write the requeue
    marker, close ``metrics`` and raise ``Preempted``."""
    from rpt import checkpoint

    out_of_time = budget is not None and budget.out_of_time()
    stop = should_stop(out_of_time)
    if step % every == 0 or step == total or step in keep_steps or stop:
        checkpoint.save(ckpt_dir, step, trainable, {"wandb_id": metrics.wandb_id, "loop_state": loop_state or {}},
                        keep_steps=keep_steps)
    if stop:
        metrics.close()
        _write_requeue_marker(stage, step, is_main)
        # why, as this rank saw it: its own signal, its own clock, or another rank's (the stop is agreed on)
        reason = ("a preemption signal" if _requested else "the time budget (run.save_before_minutes)"
                  if out_of_time else "another rank's signal or time budget")
        raise Preempted(stage, step, reason)
