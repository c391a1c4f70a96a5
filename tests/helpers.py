"""Helpers several test files share, once: the command line of the real CLI (one process or torchrun) and a runner
that shows the stderr tail when it fails, the Hydra compose of the project's config, a run's metrics rows without
machine-dependent values, the RL step set-up on a tiny model, a snapshot of its weights, and two verifiable toy
tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from rpt import config as schema
from rpt.cli import CONF_DIR
from rpt.stages.rl_training import make_setup
from rpt.tasks.base import Task
from rpt.train.optim import build_trainable

schema.register()


def rpt_command(*args: str, nproc: int = 1) -> list[str]:
    """The command line of ``rpt <args>`` on this interpreter: one process, or ``nproc`` gloo processes under
    torchrun."""
    if nproc == 1:
        return [sys.executable, "-m", "rpt.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node",
            str(nproc), "-m", "rpt.cli", *args]


def run_command(cmd: list[str], cwd: Path, *, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd``, output captured; with ``check`` it must exit 0 (the failure shows the stderr tail)."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def kill_at_checkpoint(cmd: list[str], cwd: Path, latest: Path, step: int, timeout: float = 300) -> None:
    """Start ``cmd`` and SIGKILL it as soon as the checkpoint pointer ``latest`` names step ``step`` or later; fails
    if the run ended first."""
    import os
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() >= f"step_{step:06d}":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


TIMING_KEYS = {"seconds", "tokens_per_s", "step_s", "peak_memory_gb", "mfu", "mfu_update"}  # machine-dependent


def stage_rows(run_dir: Path, stage: str) -> list[dict]:
    """``stage``'s rows of a run's ``metrics.jsonl`` without the machine-dependent values (``TIMING_KEYS`` and every
    ``time/*`` key): what an interrupted-and-resumed run must reproduce exactly."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("time/")}
            for r in rows if r["stage"] == stage]


def compose_config(*overrides: str):
    """The project's config composed with ``overrides`` (a DictConfig, before the typed conversion)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


class DigitShareTask(Task):
    """A verifiable toy task: reward = share of digit characters in the response (varies across samples)."""

    def __init__(self, tokenizer, prompts=("1 + 2 = ", "3 + 4 + 5 = ", "9 - 3 = ", "2 + 2 + 2 = ")):
        super().__init__(list(prompts), tokenizer)
        self.drawn = []  # every item handed out, in order

    def items_for_step(self, step, count, seed):
        items = super().items_for_step(step, count, seed)
        self.drawn += items
        return items

    def reference(self, item):
        return item

    def prompt_ids(self, item):
        return self.tokenizer.encode(item)

    def reward(self, item, response_text):
        return sum(c.isdigit() for c in response_text) / max(1, len(response_text))


class DigitTask(Task):
    """Reward 1 iff at least a quarter of the response's characters are digits: with a random tiny model some
    groups have a correct response and some none, so the gate has something to tell apart."""

    def __init__(self, tokenizer):
        super().__init__(["1 + 2 = ", "3 + 4 + 5 = ", "9 - 3 = ", "2 + 2 + 2 = "], tokenizer)

    def prompt_ids(self, item):
        return self.tokenizer.encode(item)

    def reward(self, item, response_text):
        return float(sum(c.isdigit() for c in response_text) >= max(1, len(response_text)) / 4)

    def reference(self, item):
        return str(eval(item.rstrip(" =")))


def rl_cfg(overrides):
    """The smoke experiment's `rpt` stage with short rollouts that never stop early, plus ``overrides``, typed."""
    return schema.load(compose_config("experiment=smoke", "stage=rpt", "rollout.stop_at_answer=false",
                                      "rollout.max_new_tokens=8", *overrides))


def rl_setup(cfg, runtime, tokenizer, task=None, ref=False):
    """An ``RLSetup`` over a freshly seeded trainable (and, with ``ref``, a reference model); default task:
    ``DigitShareTask``."""
    torch.manual_seed(0)
    trainable = build_trainable(cfg.model, tokenizer.vocab_size, runtime, cfg.rpt, cfg.rpt.steps)
    ref_model = build_trainable(cfg.model, tokenizer.vocab_size, runtime, cfg.rpt, 1).model.module if ref else None
    return make_setup(cfg, runtime, trainable, task or DigitShareTask(tokenizer), cfg.rpt, ref_model)


def policy_weights(run):
    """A copy of the policy's parameters."""
    return [p.detach().clone() for p in run.trainable.model.module.parameters()]


def assert_extra_model_resumes_exactly(make_run, extra_model, keys, tmp_path) -> None:
    """Two RL steps uninterrupted equal one step, a checkpoint, a fresh setup (``make_run()``) whose extra model
    (``extra_model(run)``: SDPO's EMA teacher, RLP's EMA baseline) is scrambled, loading it, and one more step: the
    metrics ``keys``, the policy and the extra model all equal, so the extra model is part of the checkpoint."""
    import torch

    from rpt import checkpoint
    from rpt.train.rl_loop import rl_step

    whole, rows, cursor = make_run(), [], 0
    for step in range(2):
        m, cursor = rl_step(whole, step, cursor)
        rows.append(m)
    first = make_run()
    _, cursor = rl_step(first, 0, 0)
    step_dir = checkpoint.save(tmp_path, 1, first.trainable, {"loop_state": {"cursor": cursor}})
    resumed = make_run()
    torch.manual_seed(99)  # only the checkpoint may restore the extra model
    for p in extra_model(resumed).parameters():
        p.data.normal_()
    state = checkpoint.load(step_dir, resumed.trainable)
    m, _ = rl_step(resumed, 1, state["extra"]["loop_state"]["cursor"])
    for key in keys:
        assert m[key] == rows[1][key], key
    for a, b in zip(policy_weights(resumed), policy_weights(whole), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(extra_model(resumed).parameters(), extra_model(whole).parameters(), strict=True):
        assert torch.equal(a, b)


