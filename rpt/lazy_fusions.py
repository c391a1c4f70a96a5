"""megatron-core's fused kernels compile when first called, not when megatron-core is imported.

megatron-core decorates its fused kernels (bias-GeLU, SwiGLU, ...) with ``megatron.core.jit.jit_fuser``, which is
``torch.compile``; ``torch.compile(fn)`` imports torch._dynamo and torch._inductor on the spot. That is 3 of the
5.4 s it takes to import megatron-core on a 2-core CPU, paid by every process rpt starts (each stage run, each
rank, each benchmark probe), including the many that never call a fused kernel. megatron-core has no switch for
it (``disable_jit_fuser`` acts after the decorators have run), so ``install`` (run by ``import rpt``) hooks the
import of ``megatron.core.jit``: while that one module runs, ``torch.compile`` is a wrapper that compiles a function
on its first call with the same arguments, and ``jit_fuser`` keeps the wrapper. A fused kernel that runs is compiled
exactly as before; nothing else sees the wrapper, and nothing is imported until megatron-core is.
"""

from __future__ import annotations

import functools

from rpt.import_hook import WrappingLoader, hook_import

JIT_MODULE = "megatron.core.jit"


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


class _LazyCompileLoader(WrappingLoader):
    """Runs ``megatron.core.jit`` with the lazy ``torch.compile`` in place."""

    def exec_module(self, module):
        import torch

        real = torch.compile
        torch.compile = _compile_on_first_call(real)
        try:
            self.inner.exec_module(module)
        finally:
            torch.compile = real


def install() -> None:
    """Hook the import of ``megatron.core.jit`` (a no-op once it is imported, or when already hooked)."""
    hook_import(JIT_MODULE, _LazyCompileLoader)
