"""The one timer every `rpt bench` part uses: median wall time over repeats after a warm-up call, with the GPU
synchronised around each call so asynchronous kernels are counted."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
