"""Import megatron-core with its fused kernels compiled when first called, not when imported.

megatron-core decorates its fused kernels (bias-GeLU, SwiGLU, ...) with ``megatron.core.jit.jit_fuser``, which is
``torch.compile``; ``torch.compile(fn)`` imports torch._dynamo and torch._inductor on the spot. That is 3 of the
5.4 s it takes to import megatron-core on a 2-core CPU, paid by every process rpt starts (each stage run, each
rank, each benchmark probe), including the many that never call a fused kernel. megatron-core has no switch for
it (``disable_jit_fuser`` acts after the decorators have run), so while megatron-core is first imported,
``torch.compile`` is a wrapper that compiles the function on its first call with the same arguments; it is put
back right after, and ``jit_fuser`` keeps the wrapper. A fused kernel that runs is compiled exactly as before.
"""

from __future__ import annotations

import functools
import sys


def _compile_on_first_call(real_compile):
    def compile(model=None, **options):  # torch.compile's signature: used bare or as @torch.compile(**options)
        if model is None:
            return lambda fn: compile(fn, **options)
        compiled = None

        @functools.wraps(model)
        def call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = real_compile(model, **options)
            return compiled(*args, **kwargs)
        return call
    return compile


def import_megatron_core() -> None:
    """Import megatron-core (a no-op when something imported it already) with lazily compiled fused kernels."""
    if "megatron.core" in sys.modules:
        return
    import torch

    real = torch.compile
    torch.compile = _compile_on_first_call(real)
    try:
        import megatron.core  # noqa: F401  (runs megatron.core.jit, which captures torch.compile)
        import megatron.core.jit  # noqa: F401
    finally:
        torch.compile = real
