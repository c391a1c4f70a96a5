"""Named wall-clock phases of one training step, logged as ``time/<phase>_s`` (verl's ``marked_timer`` pattern).

Each phase of a step runs under ``with timer.phase("name"):``. On CUDA the device is synchronised at both ends of
a phase, so asynchronous kernels are charged to the phase that launched them rather than to whichever phase
happens to wait for them. ``time/step_s`` is the step's wall time since the timer was made and ``time/other_s``
the part no phase covered: the phases and ``other`` add up to the step by construction, and ``other`` says how
much of it is unaccounted for. Phases do not nest (a nested phase would be counted twice), and every declared
phase is reported, 0.0 when it did not run, so each step's row has the same keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    def __init__(self, phases: Iterable[str], device: torch.device | None = None):
        self.seconds = dict.fromkeys(phases, 0.0)
        self._sync = device is not None and device.type == "cuda"
        self._open: str | None = None
        self._start = self._now()

    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the wall time of the ``with`` body to ``name`` (a declared phase; times add up over calls)."""
        if name not in self.seconds:
            raise KeyError(f"phase {name!r} was not declared; declared: {sorted(self.seconds)}")
        if self._open is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._open!r}: phases do not nest")
        self._open, start = name, self._now()
        try:
            yield
        finally:
            self.seconds[name] += self._now() - start
            self._open = None

    def elapsed(self) -> float:
        """Seconds since the timer was made (the step so far)."""
        return self._now() - self._start

    def metrics(self) -> dict[str, float]:
        """``time/<phase>_s`` for every declared phase, ``time/step_s`` and ``time/other_s``."""
        total = self.elapsed()
        out = {f"time/{name}_s": seconds for name, seconds in self.seconds.items()}
        out["time/step_s"] = total
        out["time/other_s"] = total - sum(self.seconds.values())
        return out
