"""CPU compatibility layer for megatron-core.

megatron-core is written for CUDA: it asks ``torch.cuda.current_device()`` for the device of new tensors,
synchronises streams, times with CUDA events and hard-codes ``device="cuda"`` / ``.cuda()`` in a few places
(the pipeline schedule, the optimizer, gradient clipping). No config flag avoids these, so on a machine without
CUDA we install a handful of small shims, all here, all idempotent, and all skipped when CUDA is available:

- (A) ``torch.cuda.current_device`` answers ``"cpu"``;
- (B) ``torch.cuda.synchronize`` is a no-op;
- (C) ``torch.cuda.Event`` is a wall-clock timer;
- (D) a ``TorchFunctionMode`` maps ``device="cuda"`` arguments and ``Tensor.cuda()`` to the CPU, and makes
  ``Tensor.type()`` name CPU tensors ``torch.cuda.*`` (gradient clipping asserts it);
- (E) the RNG tracker is seeded with ``model_parallel_cuda_manual_seed`` on a CPU-safe path (see ``seed_all``);
- (F) megatron's activation checkpointing (``tensor_parallel.checkpoint``, used by ``model.recompute``) saves and
  restores the CUDA RNG state besides the CPU one; a CPU machine has none, so megatron's two helpers for it
  (``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state``) answer an empty state and ignore
  one; the CPU generator's state is still saved and restored by the same megatron code;
- (G) loading a distributed-optimizer checkpoint: megatron-core 0.16 copies the loaded shards into the optimizer
  (``DistributedOptimizer._set_main_param_and_optimizer_states``) key by key over *the destination's* keys. On
  CPU the optimizer is torch's AdamW (no Apex/TE FusedAdam), whose per-parameter state also holds ``step``,
  which the loaders skip (megatron restores it from the param groups first): a ``KeyError: 'step'``. And with
  float32 weights the main parameter is a view of the model's leaf parameter, so the copy needs ``no_grad``.
  The wrapper keeps the restored ``step`` and copies under ``no_grad``. Besides, ``load_state_dict`` gives every
  parameter the *same* ``step`` tensor, which torch's AdamW then increments once per parameter in place (wrong
  bias correction after a resume): each parameter gets its own copy. And its ``state_dict`` (called to build the
  loading template) asserts that torch's AdamW holds a step, which a never-stepped one does not: such an
  optimizer first gets AdamW's own initial state (step 0, zero moments; the next step is unchanged by it).

(A)-(C), (F) and (G) are installed once per process. (D) costs a Python call per torch op (measured: 25% of a CPU decode
step, 5-10% of a training step of the tiny model) and the model's own forward and backward do not need it, so it
is active only inside ``megatron_cuda_calls()``, around the megatron entry points that hard-code CUDA: building
the DDP wrapper and the optimizer, the optimizer step (gradient clipping), dist-checkpoint save and load, and
megatron's own inference path (``rollout.engine=megatron``). Rollout, eval, scoring and the trainer's forward and
backward run without it.

Nothing else in rpt patches megatron-core.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

_INSTALLED = False


class _CpuEvent:
    """Stand-in for ``torch.cuda.Event``: records wall-clock time."""

    def __init__(self, *args, **kwargs):
        self._t = None

    def record(self, stream=None):
        self._t = time.perf_counter()

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, end: _CpuEvent) -> float:
        return (end._t - self._t) * 1000.0


def _to_cpu_device(value):
    if isinstance(value, str) and value.startswith("cuda"):
        return "cpu"
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("cpu")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return value


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects ``device='cuda'`` keyword arguments and ``Tensor.cuda()`` calls to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron asserts grads are 'torch.cuda.FloatTensor' before clipping: report CPU tensors so
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func is torch.Tensor.to and args and len(args) > 1:
            args = (args[0], _to_cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


def install() -> None:
    """Install the shims once if CUDA is unavailable (no-op on GPU machines)."""
    global _INSTALLED
    if _INSTALLED or torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: "cpu"  # (A)
    torch.cuda.synchronize = lambda *a, **k: None  # (B)
    torch.cuda.Event = _CpuEvent  # (C)
    from megatron.core.tensor_parallel import random as megatron_random

    megatron_random._get_cuda_rng_state = lambda *a, **k: torch.empty(0, dtype=torch.uint8)  # (F)
    megatron_random._set_cuda_rng_state = lambda *a, **k: None
    _patch_distributed_optimizer_loading()  # (G)
    _INSTALLED = True
    log.debug("megatron-core CPU compatibility shims installed")


def _patch_distributed_optimizer_loading() -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    set_states = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states_keeping_step(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        own = self.optimizer.state.get(main_param, {})
        if "step" in own and "step" not in tensors:  # torch AdamW: keep the step restored from the param groups
            tensors = {**tensors, "step": own["step"]}
        with torch.no_grad():
            set_states(self, model_param, tensors)

    load_state_dict = DistributedOptimizer.load_state_dict

    def load_state_dict_with_own_steps(self, state_dict):
        load_state_dict(self, state_dict)
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    state_dict = DistributedOptimizer.state_dict

    def state_dict_of_a_fresh_optimizer(self):
        inner = self.optimizer
        if isinstance(inner, torch.optim.AdamW) and not inner.state:
            for group in inner.param_groups:
                for p in group["params"]:
                    inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}
        return state_dict(self)

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states_keeping_step
    DistributedOptimizer.load_state_dict = load_state_dict_with_own_steps
    DistributedOptimizer.state_dict = state_dict_of_a_fresh_optimizer


def megatron_cuda_calls(fn=None):
    """Context manager (or decorator) around a megatron call that hard-codes CUDA: the function mode (D) while
    it runs on a CPU machine; nothing on GPU or before ``install()``."""
    if fn is not None:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with megatron_cuda_calls():
                return fn(*args, **kwargs)
        return wrapped
    return _CudaToCpuMode() if _INSTALLED else contextlib.nullcontext()


def seed_all(seed: int) -> None:
    """Seed python, numpy, torch and megatron's tensor-parallel RNG tracker (E)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)
