"""Importing rpt imports megatron-core without compiling its fused kernels (``rpt.lazy_fusions``): torch's compiler
stack stays unimported until a kernel is called, and a kernel called compiles with the options it was given; and
without running wandb's body (``rpt.lazy_wandb``) until wandb is used."""

import subprocess
import sys

import torch

from rpt.lazy_fusions import _compile_on_first_call


def test_importing_rpt_leaves_the_compiler_unimported_and_megatron_with_the_lazy_fuser():
    code = ("import sys, rpt, megatron.core.jit as jit; "
            "print('torch._inductor' in sys.modules, jit.jit_fuser.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "rpt.lazy_fusions"]


def test_a_kernel_compiles_on_its_first_call_with_its_options_and_computes_the_same():
    calls = []

    def compile_and_record(fn, **options):
        calls.append(options)
        return torch.compile(fn, **options)

    lazy = _compile_on_first_call(compile_and_record)

    @lazy(backend="eager")
    def gelu_like(x):
        return x * torch.sigmoid(1.702 * x)

    shifted = lazy(lambda x: x - 1, backend="eager", dynamic=False)
    assert calls == [] and gelu_like.__name__ == "gelu_like"  # nothing compiled at decoration
    x = torch.linspace(-3, 3, 7)
    assert torch.equal(gelu_like(x), x * torch.sigmoid(1.702 * x)) and torch.equal(shifted(x), x - 1)
    gelu_like(x)
    assert calls == [{"backend": "eager"}, {"backend": "eager", "dynamic": False}]  # once each


def test_wandb_runs_on_first_use_not_when_megatron_imports_it():
    """``rpt.lazy_wandb``: megatron-core's module-level ``import wandb`` (and torch's walk over every module's
    ``__file__``) leaves wandb's body unrun; the first real use runs it, and then wandb is the whole package."""
    code = ("import sys, rpt, megatron.core; from megatron.core.models.gpt import GPTModel; "
            "before = 'wandb.sdk' in sys.modules; import wandb; "
            "print(before, callable(wandb.init), 'wandb.sdk' in sys.modules, wandb.Table.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True", "wandb.sdk.data_types.table"]
