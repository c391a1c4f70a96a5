"""The one training-loop skeleton every training stage runs (pretrain, cnt, rpt, rl): it owns resume, metrics,
the progress bar, preemption and the time budget (rpt/train/preemption.py), and checkpoints, so a stage writes
only its step.

A step is ``step_fn(step, state) -> (metrics or None, state)``: ``step`` counts from 0, ``state`` is the loop's
own JSON-able state (e.g. the RL data cursor), saved in every checkpoint and handed back on resume. Metrics rows
are logged as step ``step + 1`` (completed steps); on resume, rows after the checkpoint's step are dropped first,
so an interrupted and resumed stage leaves exactly the rows of an uninterrupted one. A row's ``samples`` entry (a
list of dicts: example rollouts) is not a metric: it goes to ``rollouts/<stage>/step_NNNNNN.jsonl`` and a W&B
table. When stderr is not a terminal (a batch job's log), a plain line with the progress-bar metrics is logged
every ``logging.log_every`` steps.

The loop times its own work after a step's row is written (logging it, checkpointing) and reports it in the next
row as ``time/previous_log_s`` and ``time/previous_checkpoint_s``: the row is written before the checkpoint, so
that a run killed between the two loses nothing, and so cannot hold the time of what comes after it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpt import checkpoint
from rpt.rundir import write_jsonl
from rpt.train import preemption

log = logging.getLogger(__name__)

StepFn = Callable[[int, dict], tuple[dict | None, dict]]


@dataclass
class LoopSpec:
    stage: str  # checkpoints/<stage>/ and the metrics rows' "stage"
    steps: int  # total optimizer steps of the stage
    checkpoint_every: int  # steps between checkpoints (also at the end and on a preemption signal)
    init_dir: Path | None = None  # weights to start from when there is nothing to resume
    postfix: tuple[str, ...] = ()  # metric keys shown on the progress bar
    state: dict[str, Any] = field(default_factory=dict)  # the loop state of a fresh start
    keep_steps: tuple[int, ...] = ()  # steps whose checkpoint is saved and never rotated away


def run_loop(ctx, spec: LoopSpec, trainable, step_fn: StepFn) -> list[dict]:
    """Run (or resume) ``spec.stage``; returns the metrics rows of the steps this call ran."""
    ckpt_dir = ctx.rd.checkpoints(spec.stage)
    start, extra = checkpoint.resume_or_init(ckpt_dir, trainable, spec.init_dir)
    state = {**spec.state, **extra.get("loop_state", {})}
    metrics = ctx.metrics(wandb_id=extra.get("wandb_id"), resume_step=start + 1, stage=spec.stage)
    trainable.model.train()
    history = []
    bar = ctx.progress(range(start, spec.steps), desc=spec.stage, initial=start, total=spec.steps)
    plain_log = ctx.cfg.logging.log_every if not sys.stderr.isatty() else 0
    budget = preemption.TimeBudget.from_run(ctx.cfg.run)
    previous = {"time/previous_log_s": 0.0, "time/previous_checkpoint_s": 0.0}
    with preemption.ctrl_c_checkpoints():  # Ctrl-C: checkpoint after this step, as on SIGTERM
        for step in bar:
            step_start = time.perf_counter()
            row, state = step_fn(step, state)
            log_start = time.perf_counter()
            if row is not None:
                row.update(previous)
                samples = row.pop("samples", None)
                if samples is not None and ctx.rt.is_main:
                    write_jsonl(ctx.rd.path / "rollouts" / spec.stage / f"step_{step + 1:06d}.jsonl", samples)
                    metrics.log_samples(step + 1, samples)
                metrics.log(step + 1, row)
                history.append(row)
                shown = {k: f"{row[k]:.3f}" for k in spec.postfix if row.get(k) is not None}
                bar.set_postfix(shown)
                if plain_log and ((step + 1) % plain_log == 0 or step + 1 == spec.steps):
                    log.info("%s step %d/%d %s", spec.stage, step + 1, spec.steps,
                             " ".join(f"{k}={v}" for k, v in shown.items()))
            checkpoint_start = time.perf_counter()
            budget.step_done(checkpoint_start - step_start)
            preemption.end_of_step(spec.stage, step + 1, spec.steps, spec.checkpoint_every, ckpt_dir, trainable,
                                   metrics, state, budget=budget, is_main=ctx.rt.is_main, keep_steps=spec.keep_steps)
            previous = {"time/previous_log_s": checkpoint_start - log_start,
                        "time/previous_checkpoint_s": time.perf_counter() - checkpoint_start}
    metrics.close()
    return history
