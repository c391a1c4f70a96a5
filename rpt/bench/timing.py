"""The one timer every `rpt bench` part uses: wall time of every repeat after a warm-up call, with the GPU
synchronised around each call so asynchronous kernels are counted. A part reports the median and the spread
(fastest and slowest repeat): one number from a noisy machine reads as more certain than it is."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed repeat."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> list[float]:
        """[fastest, slowest] repeat."""
        return [min(self.times), max(self.times)]


def timed(fn, repeats: int) -> Timing:
    """Wall seconds of ``repeats`` calls of ``fn()``, after one untimed warm-up call."""
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
    return Timing(tuple(times))


def ratio_spread(numerator: Timing, denominator: Timing) -> list[float]:
    """[lowest, highest] value ``numerator / denominator`` can take over the two timings' repeats."""
    return [min(numerator.times) / max(denominator.times), max(numerator.times) / min(denominator.times)]
