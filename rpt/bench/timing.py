"""The one timer every `rpt bench` part uses: wall time of every repeat after a warm-up call, with the GPU
synchronised around each call so asynchronous kernels are counted. A part reports the median and the spread
(fastest and slowest repeat): one number from a noisy machine reads as more certain than it is. What a ratio
compares is timed in alternation (ours, peer, ours, peer, ...), not one block after the other."""

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


def _wall(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed_alternating(fns: dict, repeats: int) -> dict[str, Timing]:
    """Wall seconds of ``repeats`` rounds in which each of ``fns`` (name -> callable) runs once, in turn, after one
    untimed warm-up call each. A stretch in which the machine runs slower then falls on every function alike, so
    the ratios between them hold up better than those of timings taken one function after the other."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_wall(fn))
    return {name: Timing(tuple(t)) for name, t in times.items()}


def timed(fn, repeats: int) -> Timing:
    """Wall seconds of ``repeats`` calls of ``fn()``, after one untimed warm-up call."""
    return timed_alternating({"fn": fn}, repeats)["fn"]


def ratio_spread(numerator: Timing, denominator: Timing) -> list[float]:
    """[lowest, highest] value ``numerator / denominator`` can take over the two timings' repeats."""
    return [min(numerator.times) / max(denominator.times), max(numerator.times) / min(denominator.times)]
