"""Checkpoints that resume exactly: megatron dist_checkpointing for model + optimizer, plus a small state file.
(A top-level module because model loading, the training loop and the stages all read checkpoints.)

Layout: ``checkpoints/<stage>/step_000123/`` holds the distributed checkpoint (reshardable across TP/DP layouts)
and ``state.pt`` (step, scheduler, RNG states of python/numpy/torch/megatron, data cursor, W&B run id, any extra
JSON-able values). ``checkpoints/<stage>/latest`` names the newest complete step and is written last, atomically.
Models beside the trained one that a resume needs (``Trainable.extra_models``: SDPO's EMA teacher) are saved in
the same distributed checkpoint under their name's prefix.
With ``model.distributed_optimizer`` the optimizer state is megatron's ``fully_reshardable`` format of the
distributed optimizer (each rank saves its shard; loads under another DP/TP layout); a checkpoint resumes only with
the optimizer kind that saved it (checked, with a clear error).
"""

from __future__ import annotations

import logging
import os
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
from rpt.model.weight_writes import note_weights_written
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


def _is_distributed(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return any(isinstance(opt, DistributedOptimizer) for opt in getattr(optimizer, "chained_optimizers", [optimizer]))


def _optimizer_sharded_state(optimizer, model_sd, is_loading: bool = False) -> dict:
    """The optimizer's dist-checkpoint entries; the distributed optimizer in its reshardable format (megatron's
    default for it, ``fully_sharded_model_space``, is refused by megatron-core 0.16's own checkpointing)."""
    if _is_distributed(optimizer):
        return optimizer.sharded_state_dict(model_sd, is_loading,
                                            metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    return optimizer.sharded_state_dict(model_sd, is_loading)


def latest_step_dir(stage_dir: Path) -> Path | None:
    pointer = Path(stage_dir) / "latest"
    if not pointer.exists():
        return None
    return Path(stage_dir) / pointer.read_text().strip()


def _forked_results_queue() -> None:
    """megatron's checkpoint writer collects its workers' results through a ``Manager`` queue that it starts with
    the ``spawn`` method: a fresh interpreter that re-imports torch and the caller's modules, several seconds of
    CPU in every process that saves (each stage of a small run, each test's CLI call). A forked ``Manager`` serves
    the same queue at once; megatron forks its writer processes from the trainer the same way. The Manager's
    process is tied to the trainer's life (``_exit_with_parent``): a trainer killed by SIGKILL would otherwise
    leave it sleeping forever."""
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", False) is None:
        manager = SyncManager(ctx=torch.multiprocessing.get_context("fork"))
        manager.start(initializer=_exit_with_parent, initargs=(os.getpid(),))
        filesystem_async._results_queue = manager.Queue()


def _exit_with_parent(parent: int) -> None:
    """In a helper process: be killed when ``parent`` dies, however it dies (Linux ``PR_SET_PDEATHSIG``; elsewhere
    nothing), and exit at once if it is already gone. SIGKILL, because a forked helper inherits the trainer's
    SIGTERM handler (checkpoint at the next step), which would keep it alive."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)


@megatron_cuda_calls
def save(stage_dir: Path, step: int, trainable, extra: dict[str, Any], keep: int = 2, keep_steps=()) -> Path:
    """Save everything needed to resume after ``step`` completed steps; the ``keep`` newest checkpoints and those of
    ``keep_steps`` stay, older ones go."""
    _forked_results_queue()
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
        sharded["optimizer"] = _optimizer_sharded_state(trainable.optimizer, model_sd)
    extra_models = getattr(trainable, "extra_models", {})
    for name, model in extra_models.items():  # e.g. SDPO's EMA teacher
        sharded[name] = model.sharded_state_dict(prefix=f"{name}.")
    dist_checkpointing.save(sharded, str(step_dir))
    if rank0:
        state = {"step": step, "scheduler": trainable.scheduler.state_dict(), "rng": capture_rng(),
                 "extra": extra, "has_optimizer_state": has_optimizer_state, "extra_models": sorted(extra_models),
                 "distributed_optimizer": _is_distributed(trainable.optimizer)}
        torch.save(state, step_dir / "state.pt")
        write_text(stage_dir / "latest", step_dir.name)
        kept = {f"step_{s:06d}" for s in keep_steps}
        old = sorted(p for p in stage_dir.glob("step_*") if p != step_dir and p.name not in kept)
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
        if state.get("distributed_optimizer", False) != _is_distributed(trainable.optimizer):
            raise ValueError(f"checkpoint {step_dir} was saved with model.distributed_optimizer="
                             f"{state.get('distributed_optimizer', False)}: resume it with the same setting")
        sharded["optimizer"] = _optimizer_sharded_state(trainable.optimizer, model_sd, is_loading=True)
    extra_models = getattr(trainable, "extra_models", {})
    missing = sorted(set(extra_models) - set(state.get("extra_models", [])))
    if missing:
        raise ValueError(f"checkpoint {step_dir} has no {missing} (saved by a run with another algo); resume it "
                         f"with that run's algo or start a new stage")
    for name, model in extra_models.items():
        sharded[name] = model.sharded_state_dict(prefix=f"{name}.")
    loaded = dist_checkpointing.load(sharded, str(step_dir))
    trainable.model.module.load_state_dict(loaded["model"])
    for name, model in extra_models.items():  # its keys carry the prefix it was saved under
        model.load_state_dict({key.removeprefix(f"{name}."): value for key, value in loaded[name].items()})
    if state["has_optimizer_state"]:
        trainable.optimizer.load_state_dict(loaded["optimizer"])
    trainable.scheduler.load_state_dict(state["scheduler"])
    note_weights_written(trainable.model)
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
    note_weights_written(model)


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
