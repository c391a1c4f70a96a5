"""Advantage estimators in a registry (``algo.advantage`` names one).

An estimator is ``(rewards [N], group_size, algo, planning) -> advantages`` registered with
``@register_advantage``, returning one value per response (``[N]``) or per response token (``[N, T-1]``, aligned
with ``tokens[:, 1:]``); groups are contiguous blocks of ``group_size`` responses to the same prompt, and
``planning`` is the ``[N, T-1]`` mask of planning tokens (inside strategic grams, ``rpt.analysis.planning``).

- ``grpo``: A_i = (r_i − mean_g r) / (std_g r + eps) with ``algo.norm_adv_by_std``, std_g the sample standard
  deviation (Bessel-corrected, ``torch.std``'s default, as verl's ``compute_grpo_outcome_advantage`` and TRL's
  ``GRPOTrainer``: rewards [1, 0, 0, 0, 0, 0, 0, 0] give A_1 = 2.475); without it (Dr.GRPO) A_i = r_i − mean_g r.
- ``hicra`` (arXiv 2509.03646): A = r − mean_g r (no std), and A' = A + α·|A| on planning tokens (α =
  ``algo.planning_alpha``), A elsewhere: a correct response's planning tokens get (1+α) of the credit, a wrong
  one's (1−α) of the blame.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}


def register_advantage(name: str):
    def register(fn):
        ADVANTAGES[name] = fn
        return fn
    return register


def compute_advantages(rewards: torch.Tensor, group_size: int, algo, planning: torch.Tensor) -> torch.Tensor:
    if algo.advantage not in ADVANTAGES:
        raise ValueError(f"algo.advantage must be one of {sorted(ADVANTAGES)}, got {algo.advantage!r}")
    return ADVANTAGES[algo.advantage](rewards, group_size, algo, planning)


def group_advantages(rewards: torch.Tensor, group_size: int, norm_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if norm_by_std:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)  # Bessel-corrected, as verl and TRL
    return adv.view(-1)


@register_advantage("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, algo, planning: torch.Tensor) -> torch.Tensor:
    return group_advantages(rewards, group_size, algo.norm_adv_by_std, algo.adv_eps)


@register_advantage("hicra")
def hicra_advantages(rewards: torch.Tensor, group_size: int, algo, planning: torch.Tensor) -> torch.Tensor:
    adv = group_advantages(rewards, group_size, norm_by_std=False).view(-1, 1).to(planning.device)
    return adv + algo.planning_alpha * adv.abs() * planning.float()


def all_equal_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """Bool per group: every reward within ``tol`` of the others (no learning signal)."""
    grouped = rewards.float().view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) <= tol
