"""Critique-GRPO (arXiv 2506.03106) as pure tensor functions: the refinement gate, how many refinements a group
takes and which, and the shaped objective of refinement tokens.

- Gate: by default only groups with no correct response are refined (the paper; ``algo.critique.gate=all_wrong``);
  ``always`` refines every group (the released code).
- Ratio: the paper's best initial : refinement ratio was 7 : 1 (n = 7 initial + k = 1 refinement). We keep every
  group at ``G`` rows (the shared-prompt forward, mini-batches and dynamic sampling all work in whole groups of G),
  so a refined group holds ``G - k`` initial responses and ``k = max(1, G // (ratio + 1))`` refinements, each
  replacing the failed response it refines: G = 8 gives the paper's 7 + 1; G = 4 gives 3 + 1. An unrefined group
  keeps its G initial responses. The same G responses are sampled as with GRPO, so the rollout budget is GRPO's
  plus the refinements.
- Selection: among a group's generated refinements, correct ones first, the rest in a seeded random order.
- Loss: initial responses as in GRPO (the configured policy loss); refinement tokens −A · π/(π + γ), γ = 0.1, with
  π the policy's probability of the token given the *question only* (the refinement is re-scored under the plain
  prompt, without the critique). The released code drops PPO clipping on refinements; so do we (the shaping has no
  importance ratio to clip: the refinement was sampled under another prompt). The advantage is R − mean over
  the initial and refinement rewards of the group together, without std (``norm_adv_by_std=false``, set by
  ``conf/algo/critique_grpo.yaml``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

GATES = ("all_wrong", "always")
KINDS = ("indicative", "ground_truth", "self")


def refinement_count(group_size: int, ratio: int) -> int:
    """Refinements a refined group holds: ``max(1, G // (ratio + 1))``, at most G - 1."""
    if group_size < 2:
        raise ValueError(f"Critique-GRPO needs rollout.group_size >= 2, got {group_size}")
    return min(max(1, group_size // (ratio + 1)), group_size - 1)


def refine_gate(correct: torch.Tensor, group_size: int, gate: str) -> torch.Tensor:
    """Bool per group of the responses' ``correct`` flags (``Task.is_correct``): whether it is refined
    (``all_wrong``: no correct response; ``always``: every group with a failed response)."""
    failed = ~correct.bool().view(-1, group_size)
    if gate == "all_wrong":
        return failed.all(1)
    if gate == "always":
        return failed.any(1)
    raise ValueError(f"algo.critique.gate must be one of {GATES}, got {gate!r}")


def choose_refinements(correct: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    """Indices of ``k`` of the candidate refinements (their ``correct`` flags ``[c]``): correct ones first, ties in
    a seeded random order."""
    order = torch.randperm(correct.numel(), generator=generator)
    ranked = sorted(order.tolist(), key=lambda i: -int(correct[i]))
    return ranked[:k]


def shaped_probability(logp: torch.Tensor, gamma: float) -> torch.Tensor:
    """π / (π + γ) with π = exp(logp): the refinement tokens' stand-in for the importance ratio. Its gradient
    γ/(π + γ)² · π ∇log π weighs low-probability tokens up (the paper's shaping, γ = 0.1)."""
    prob = logp.exp()
    return prob / (prob + gamma)


def shape_refinements(terms, logp: torch.Tensor, adv: torch.Tensor, refinement: torch.Tensor, gamma: float):
    """The policy terms with refinement tokens' loss replaced by −A · π/(π + γ) (never counted as clipped)."""
    shaped = -adv.expand_as(logp) * shaped_probability(logp, gamma)
    metrics = {name: torch.where(refinement, torch.zeros_like(v), v) for name, v in terms.metrics.items()}
    return replace(terms, loss=torch.where(refinement, shaped, terms.loss), metrics=metrics)
