"""Preemption in a job of the hydra-submitit launcher (``hydra/launcher=rpt_slurm``): rpt, not submitit, handles
the signals, and rpt requeues the job itself.

submitit runs each sweep point as ``srun python -m submitit.core._submit <folder>``; before the task function it
binds SIGUSR2 (its time-limit warning, ``--signal=USR2@signal_delay_s``) to a handler that checkpoints its own
pickle, runs ``scontrol requeue`` and exits from inside whatever the process was doing, on the first rank only,
with nothing of the training step saved. Two things went wrong with it:

- a second USR2 while that handler ran re-entered it (``AssertionError('A temporary saved file already exists.')``
  in the middle of a training step, the point failed);
- rpt's own stop (SIGTERM, SIGUSR1, the time budget) ended with ``SystemExit(99)``, which submitit neither
  catches nor requeues: the array task FAILED without a result file, and the sweep process, which learns of a job's
  end from that file or from ``sacct`` (not answering without accounting), waited forever.

So ``preemption.install`` (called by the task function, after submitit bound its handlers) takes USR2 too: any of
the signals sets rpt's flag, every rank checkpoints at the end of the same step, and then ``requeue`` runs on
every rank: the first one requeues the job the way submitit would (``scontrol requeue``; a USR2 or the time budget
counts one of the launcher's ``max_num_timeout`` timeouts in submitit's pickle), unless the job was cancelled
(a plain ``scancel``: slurmstepd's ``CANCELLED AT`` line, as launch/slurm/rpt.sbatch reads it) or is out of
timeouts. A requeued job exits with status 99 and runs again from the same pickle (finished stages skipped, the
interrupted one resumed). A job that is not requeued raises ``NotRequeued``, an ordinary exception, on every rank:
Hydra records the point as failed, submitit writes each task's result file, and the sweep process ends naming why.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

ALREADY_REQUEUED = ("PENDING", "REQUEUE", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")  # Slurm requeued it itself


class NotRequeued(RuntimeError):
    """A submitit job checkpointed for requeue but was not requeued (cancelled, out of timeouts, scontrol failed)."""


def active(environ=os.environ) -> bool:
    """True in a task of a submitit Slurm job (submitit's job script exports SUBMITIT_EXECUTOR; process_job sets
    SUBMITIT_FOLDER)."""
    return environ.get("SUBMITIT_EXECUTOR") == "slurm" and bool(environ.get("SUBMITIT_FOLDER"))


def preempt_signal(environ=os.environ) -> signal.Signals:
    """submitit's warning signal: USR2 unless SUBMITIT_PREEMPT_SIGNAL names another."""
    name = environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[name if name.startswith("SIG") else "SIG" + name]


def _job_fields(job_id: str) -> dict[str, str]:
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def _cancelled(fields: dict[str, str], job_ids: tuple[str, ...], stderr: Path) -> bool:
    """A plain scancel (not a preemption, time limit or requeue): JobState CANCELLED, or slurmstepd's
    ``*** JOB <id> ON <node> CANCELLED AT <time> ***`` in the job's error file (no "DUE TO ..." after it). Not the
    ``*** STEP <id>.0 ... CANCELLED AT`` line: Slurm 22.05 writes that one for ``scancel --signal=TERM`` too."""
    if fields.get("JobState", "").startswith("CANCELLED"):
        return True
    path = Path(fields.get("StdErr") or stderr)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    ids = "|".join(re.escape(i) for i in job_ids)
    pattern = rf"\*\*\* JOB ({ids}) ON \S+ CANCELLED AT \S+ \*\*\*"
    return re.search(pattern, text) is not None


def _requeue_job(timed_out: bool) -> str:
    """On the first rank: requeue this submitit job; returns why not ('' when requeued)."""
    from submitit import JobEnvironment
    from submitit.core.utils import DelayedSubmission

    env = JobEnvironment()
    paths = env.paths
    fields = _job_fields(env.job_id)
    if _cancelled(fields, (env.raw_job_id, env.job_id), paths.stderr):
        return f"job {env.job_id} was cancelled"
    if timed_out:  # submitit's count of timeouts, kept in the pickle the requeued job loads
        delayed = DelayedSubmission.load(paths.submitted_pickle)
        countdown = delayed._timeout_countdown - 1
        if countdown < 0:
            return f"job {env.job_id} timed out too many times (hydra.launcher.max_num_timeout)"
        delayed.set_timeout(delayed._timeout_min, countdown)
        tmp = paths.submitted_pickle.with_name(paths.submitted_pickle.name + ".rpt_tmp")
        delayed.dump(tmp)
        os.replace(tmp, paths.submitted_pickle)
        log.info("submitit: %d timeout(s) left after this one", countdown)
    proc = subprocess.run(["scontrol", "requeue", env.job_id], capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        log.warning("submitit job %s requeued: it resumes from this checkpoint", env.job_id)
        return ""
    state = _job_fields(env.job_id).get("JobState", "")
    if state.startswith(ALREADY_REQUEUED):
        log.warning("submitit job %s is %s: already requeued by Slurm", env.job_id, state)
        return ""
    return f"`scontrol requeue {env.job_id}` failed ({proc.stderr.strip()}; job state {state or 'unknown'})"


def requeue(stop, is_main: bool, timed_out: bool) -> None:
    """After every rank checkpointed for requeue (``stop``: a ``preemption.Preempted``) in a submitit job: the first
    rank requeues the job; returns when it did (the caller exits with status 99), else raises ``NotRequeued`` on
    every rank (a collective: every rank calls it)."""
    from rpt.distributed import world_any

    why = ""
    if is_main:
        try:
            why = _requeue_job(timed_out)
        except Exception as err:  # noqa: BLE001 - whatever failed, the sweep must learn that this point ended
            why = f"requeueing failed: {err!r}"
    if world_any(bool(why)):
        raise NotRequeued(f"stage {stop.stage} checkpointed at step {stop.step} on {stop.reason}, but the job was "
                          f"not requeued: {why or 'see the first rank'}; run the same sweep again to resume")
