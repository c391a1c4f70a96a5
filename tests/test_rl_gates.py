"""The correctness gates the RL frameworks run in CI (verl, NeMo-RL, slime, TRL), on rpt's real RL step with the
smoke model, each shown to fail on a planted fault: every trainable parameter moves in a few steps (a detached
layer does not), and the first step is exactly on-policy: importance ratio 1 and KL to the reference 0 (a reference
other than the starting weights is caught)."""

from __future__ import annotations

import torch

from rpt.train.rl_loop import rl_step
from tests.helpers import rl_cfg, rl_setup

# a learning signal on every step whatever the rewards (the entropy bonus), and no weight decay, so that a
# parameter moves only if a gradient reaches it
TRAINS = ["rpt.lr=0.05", "algo.entropy_coef=0.05", "rpt.weight_decay=0.0"]


def unchanged_parameters(model, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of the trainable parameters still equal to their ``before`` values."""
    return [name for name, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[name])]


def _train(run, steps: int) -> list[str]:
    model = run.trainable.model.module
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cursor = 0
    for step in range(steps):
        metrics, cursor = rl_step(run, step, cursor)
        assert metrics["optimizer_steps"] >= 1
    return unchanged_parameters(model, before)


def test_every_trainable_parameter_changes_in_a_few_rl_steps(runtime, tokenizer):
    assert _train(rl_setup(rl_cfg(TRAINS), runtime, tokenizer), 3) == []


def test_a_detached_layer_is_caught(runtime, tokenizer):
    run = rl_setup(rl_cfg(TRAINS), runtime, tokenizer)
    layer = run.trainable.model.module.decoder.layers[0]
    handle = layer.register_forward_hook(lambda module, args, out: tuple(
        o.detach() if torch.is_tensor(o) else o for o in out) if isinstance(out, tuple) else out.detach())
    try:
        frozen = _train(run, 3)
    finally:
        handle.remove()
    assert frozen and all(name.startswith("decoder.layers.0.") for name in frozen)


def _first_step(runtime, tokenizer, perturb_reference: bool) -> dict:
    run = rl_setup(rl_cfg(["algo.kl_coef=0.1"]), runtime, tokenizer, ref=True)
    run.ref_model.load_state_dict(run.trainable.model.module.state_dict())  # the stage's reference: its start
    if perturb_reference:
        with torch.no_grad():
            for p in run.ref_model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    metrics, _ = rl_step(run, 0, 0)
    return metrics


def test_the_first_step_is_exactly_on_policy(runtime, tokenizer):
    metrics = _first_step(runtime, tokenizer, perturb_reference=False)
    assert metrics["optimizer_steps"] >= 1
    assert metrics["kl_to_old"] == 0.0 and metrics["clip_frac_low"] == metrics["clip_frac_high"] == 0.0
    assert metrics["kl_to_ref"] == 0.0


def test_a_reference_other_than_the_start_is_caught(runtime, tokenizer):
    assert _first_step(runtime, tokenizer, perturb_reference=True)["kl_to_ref"] > 0.0
