"""Peak memory of this process, measured one way everywhere it is reported (the RL step's ``peak_memory_gb``,
``rpt bench``'s memory part): on GPU the CUDA allocator's high-water mark, on CPU the process's resident-set
high-water mark (``ru_maxrss``: torch's CPU allocations are invisible to ``tracemalloc``). ``select_memory``
reads the same counter of a child process (``os.wait4``)."""

from __future__ import annotations

import resource

import torch

MIB = 2**20


def peak_memory_bytes(device: torch.device, reset: bool = False) -> int:
    """Bytes at this process's high-water mark on ``device`` so far (``reset``: on GPU, start a new one)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
