"""Process runtime for a stage: device and dtype choice, torch.distributed + megatron parallel state, seeding.

Works for any world size: under ``torchrun`` the usual RANK/WORLD_SIZE/MASTER_* variables are read; one task
per GPU started by ``srun`` (launch/slurm/rpt.sbatch) takes its rank from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS
and the rendezvous from the MASTER_ADDR/MASTER_PORT the job script passes to the tasks (so Slurm's signals reach
every rank directly, with no agent in between); a job of the hydra-submitit Slurm launcher gets them from
submitit's job environment; a plain ``python``/``rpt`` call becomes a world of one. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rpt.model import cpu_compat

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int
    world_size: int
    dp_rank: int
    dp_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(run_cfg) -> torch.device:
    if run_cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if run_cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is available (use run.device=cpu)")
    if run_cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"run.device must be auto, cpu or cuda, got {run_cfg.device!r}")
    return torch.device(run_cfg.device)


def resolve_dtype(run_cfg, device: torch.device) -> torch.dtype:
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if run_cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if run_cfg.dtype not in names:
        raise ValueError(f"run.dtype must be auto, float32 or bfloat16, got {run_cfg.dtype!r}")
    return names[run_cfg.dtype]


def _export_submitit_ranks() -> None:
    """A job of the hydra-submitit launcher (one process per Slurm task): export RANK/WORLD_SIZE/MASTER_* from
    submitit's job environment so the env:// rendezvous below works as under torchrun."""
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("submitit job: rank %d of %d, master %s:%d", env.rank, env.world_size, env.master_addr, env.master_port)


def slurm_rank_env(environ) -> dict[str, str]:
    """The torch.distributed variables of one ``srun`` task (RANK, WORLD_SIZE, LOCAL_RANK), or {} when ``environ``
    is not such a task: torchrun's own variables win, and a Slurm task joins a world only when the job script gave
    it MASTER_ADDR (a plain ``rpt`` in a batch script, or a one-task ``srun``, stays a world of one)."""
    if "RANK" in environ or "SLURM_PROCID" not in environ:
        return {}
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or 1)
    if "MASTER_ADDR" not in environ:
        if int(environ.get("SLURM_STEP_NUM_TASKS") or 1) > 1:  # srun's own variable: surely a multi-task step
            raise RuntimeError(f"this is one of {tasks} srun tasks but MASTER_ADDR is not set: launch with "
                               "launch/slurm/rpt.sbatch, or export MASTER_ADDR (first node) and MASTER_PORT")
        return {}
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(tasks),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"), "MASTER_PORT": environ.get("MASTER_PORT", "29500")}


def init(run_cfg) -> Runtime:
    """Initialise torch.distributed and megatron parallel state (idempotent within a process)."""
    from megatron.core import parallel_state

    if run_cfg.pipeline_parallel != 1:
        # every stage builds the whole model per model-parallel rank and runs no pipeline schedule; the paper's
        # models (up to 14B) fit with tensor parallelism within a node, so pipeline stages are not wired in yet
        raise ValueError(f"run.pipeline_parallel={run_cfg.pipeline_parallel}: pipeline parallelism is not "
                         "supported yet; use run.tensor_parallel (and more data-parallel processes) instead")
    device = resolve_device(run_cfg)
    if device.type == "cpu":
        cpu_compat.install()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            _export_submitit_ranks()
        elif slurm := slurm_rank_env(os.environ):
            os.environ.update(slurm)
            log.info("srun task: rank %s of %s, master %s:%s", slurm["RANK"], slurm["WORLD_SIZE"],
                     os.environ["MASTER_ADDR"], slurm["MASTER_PORT"])
        if device.type == "cuda":
            # modulo: a task bound to its own GPU (srun --gpus-per-task, --gpu-bind) sees one device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if "RANK" in os.environ:  # torchrun / srun / submitit: env:// rendezvous
            dist.init_process_group(backend)
        else:  # a plain process: a world of one on a free local port (nothing leaks into child environments)
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=run_cfg.tensor_parallel,
            pipeline_model_parallel_size=run_cfg.pipeline_parallel,
        )
    cpu_compat.seed_all(run_cfg.seed)
    rt = Runtime(
        device=device if device.type == "cpu" else torch.device("cuda", torch.cuda.current_device()),
        dtype=resolve_dtype(run_cfg, device),
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
    )
    log.info("runtime: %s %s, world %d (dp %d, tp %d)", rt.device, rt.dtype, rt.world_size, rt.dp_size,
             run_cfg.tensor_parallel)
    return rt


_shutdown_hooks: list = []


def at_shutdown(hook) -> None:
    """Call ``hook()`` in ``shutdown``, after megatron's groups are gone and before the process group is (vLLM's
    colocated engine shuts down there: its own teardown destroys the process group it joined)."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)


def shutdown() -> None:
    """Tear down megatron parallel state and the process group (lets one process run several stages)."""
    from megatron.core import parallel_state

    with contextlib.suppress(Exception):
        parallel_state.destroy_model_parallel()
    while _shutdown_hooks:
        _shutdown_hooks.pop()()
    if dist.is_initialized():
        dist.destroy_process_group()
