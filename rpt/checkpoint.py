"""Checkpoints that resume exactly: megatron dist_checkpointing for model + optimizer, plus a small state file.
(A top-level module because model loading, the training loop and the stages all read checkpoints.)

Layout: ``checkpoints/<stage>/step_000123/`` holds the distributed checkpoint (reshardable across TP/DP layouts)
and ``state.pt`` (step, scheduler, RNG states of python/numpy/torch/megatron, data cursor, W&B run id, any extra
JSON-able values). ``checkpoints/<stage>/latest`` names the newest complete step and is written last, atomically.
The optimizer state is the non-distributed one (the distributed optimizer's checkpoints do not load on CPU).
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel

from rpt.distributed import barrier
from rpt.model.cpu_compat import megatron_cuda_calls
from rpt.rundir import write_text

log = logging.getLogger(__name__)


def capture_rng() -> dict:
    state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [state[0], torch.from_numpy(state[1].copy()), *state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "megatron": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def restore_rng(rng: dict) -> None:
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(rng["megatron"])


def _has_optimizer_state(optimizer) -> bool:
    return any(bool(opt.optimizer.state) for opt in getattr(optimizer, "chained_optimizers", [optimizer]))


def latest_step_dir(stage_dir: Path) -> Path | None:
    pointer = Path(stage_dir) / "latest"
    if not pointer.exists():
        return None
    return Path(stage_dir) / pointer.read_text().strip()


@megatron_cuda_calls
def save(stage_dir: Path, step: int, trainable, extra: dict[str, Any], keep: int = 2) -> Path:
    """Save everything needed to resume after ``step`` completed steps."""
    stage_dir = Path(stage_dir)
    step_dir = stage_dir / f"step_{step:06d}"
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        if step_dir.exists():
            shutil.rmtree(step_dir)
        step_dir.mkdir(parents=True)
    barrier()
    model_sd = trainable.model.module.sharded_state_dict()
    sharded = {"model": model_sd}
    has_optimizer_state = _has_optimizer_state(trainable.optimizer)
    if has_optimizer_state:  # a never-stepped optimizer is saved as "fresh" (megatron drops a zero step count)
        sharded["optimizer"] = trainable.optimizer.sharded_state_dict(model_sd)
    dist_checkpointing.save(sharded, str(step_dir))
    if rank0:
        state = {"step": step, "scheduler": trainable.scheduler.state_dict(), "rng": capture_rng(),
                 "extra": extra, "has_optimizer_state": has_optimizer_state}
        torch.save(state, step_dir / "state.pt")
        write_text(stage_dir / "latest", step_dir.name)
        old = sorted(p for p in stage_dir.glob("step_*") if p != step_dir)
        for p in old[:-max(keep - 1, 0)] if keep > 1 else old:
            shutil.rmtree(p, ignore_errors=True)
    barrier()
    log.info("saved checkpoint %s", step_dir)
    return step_dir


@megatron_cuda_calls
def load(step_dir: Path, trainable) -> dict:
    """Restore model, optimizer, scheduler and RNG from ``step_dir``; returns the state (step, extra)."""
    state = torch.load(Path(step_dir) / "state.pt", weights_only=True)
    model_sd = trainable.model.module.sharded_state_dict()
    sharded = {"model": model_sd}
    if state["has_optimizer_state"]:
        sharded["optimizer"] = trainable.optimizer.sharded_state_dict(model_sd, is_loading=True)
    loaded = dist_checkpointing.load(sharded, str(step_dir))
    trainable.model.module.load_state_dict(loaded["model"])
    if state["has_optimizer_state"]:
        trainable.optimizer.load_state_dict(loaded["optimizer"])
    trainable.scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    log.info("resumed from %s (step %d)", step_dir, state["step"])
    return state


def resume_or_init(stage_dir: Path, trainable, init_dir: Path | None = None) -> tuple[int, dict[str, Any]]:
    """Resume from the newest checkpoint in ``stage_dir`` if there is one, else load the weights of ``init_dir``
    (when given); returns (first step to run, the ``extra`` dict saved with the checkpoint, empty when fresh)."""
    if (latest := latest_step_dir(stage_dir)) is not None:
        state = load(latest, trainable)
        return state["step"], state["extra"]
    if init_dir is not None:
        load_model_weights(init_dir, trainable.model.module)
    return 0, {}


@megatron_cuda_calls
def load_model_weights(step_dir: Path, model) -> None:
    """Load only the model weights (a GPTModel, unwrapped) from a checkpoint, e.g. to start a later stage."""
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(step_dir))
    model.load_state_dict(loaded["model"])


@megatron_cuda_calls
def save_model_only(stage_dir: Path, model) -> Path:
    """A weights-only checkpoint (e.g. an imported HF model) that ``load_model_weights`` and stages can start from."""
    stage_dir = Path(stage_dir)
    step_dir = stage_dir / "step_000000"
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        shutil.rmtree(step_dir, ignore_errors=True)
        step_dir.mkdir(parents=True)
    barrier()
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(step_dir))
    if rank0:
        write_text(stage_dir / "latest", step_dir.name)
    barrier()
    return step_dir
