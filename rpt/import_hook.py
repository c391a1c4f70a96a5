"""One module's import run through a loader of rpt's (``lazy_fusions``, ``lazy_wandb``): a finder first on
``sys.meta_path`` that finds the module as usual and wraps its loader. Python's import system has no other way to
change how a third-party module is executed without editing it."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable


class WrappingLoader(importlib.abc.Loader):
    """A loader around the module's own ``inner`` loader; subclasses change ``exec_module``."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)


class _ModuleFinder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, wrap: Callable[[importlib.abc.Loader], WrappingLoader]):
        self.name, self.wrap = name, wrap

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = self.wrap(spec.loader)
        return spec


def hook_import(name: str, wrap: Callable[[importlib.abc.Loader], WrappingLoader]) -> None:
    """Load ``name`` through ``wrap(its loader)`` when it is imported (a no-op once it is imported, or when
    already hooked)."""
    hooked = any(isinstance(f, _ModuleFinder) and f.name == name for f in sys.meta_path)
    if name not in sys.modules and not hooked:
        sys.meta_path.insert(0, _ModuleFinder(name, wrap))
