"""``import wandb`` costs its body only when wandb is first used.

megatron-core imports wandb at module level (``try: import wandb`` in its timers and its dynamic inference
context) for features rpt never turns on; that is ~0.5 s of every process that imports megatron-core on a 2-core
CPU (each stage run, each rank, each benchmark probe). ``install`` (run by ``import rpt``) hooks its import
(``rpt.import_hook``) with a loader that makes ``wandb`` a module with its import attributes (``__file__``,
``__path__``, ``__spec__``) and a module-level ``__getattr__`` (PEP 562) that runs the package body the first
time any other name is asked for, e.g. rpt's ``wandb.init`` when W&B logging is on.

Why not ``importlib.util.LazyLoader``: it loads on *any* attribute, and torch's op registration walks
``sys.modules`` through ``inspect.getmodule`` reading every module's ``__file__``, which would load wandb during
megatron-core's import anyway.
"""

from __future__ import annotations

from rpt.import_hook import WrappingLoader, hook_import

PACKAGE = "wandb"


class _RunOnFirstUse(WrappingLoader):
    def exec_module(self, module):
        inner = self.inner

        def __getattr__(name):  # only called for names the module does not have yet
            del module.__dict__["__getattr__"]
            module.__loader__ = module.__spec__.loader = inner
            inner.exec_module(module)
            return getattr(module, name)

        module.__getattr__ = __getattr__


def install() -> None:
    """Make the next ``import wandb`` lazy (a no-op once wandb is imported, or when already installed)."""
    hook_import(PACKAGE, _RunOnFirstUse)
