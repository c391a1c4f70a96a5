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
- (E) the RNG tracker is seeded with ``model_parallel_cuda_manual_seed`` on a CPU-safe path (see ``seed_all``).

(A)-(C) are installed once per process. (D) costs a Python call per torch op (measured: 25% of a CPU decode
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
    _INSTALLED = True
    log.debug("megatron-core CPU compatibility shims installed")


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
