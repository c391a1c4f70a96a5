"""GRPO advantages: rewards normalised within each group of G completions of the same prompt.

A_i = (r_i − mean_g r) / (std_g r + eps) with ``norm_by_std``; without it (Dr.GRPO) A_i = r_i − mean_g r.
The std is the population std of the group (as in verl). Groups are contiguous blocks of ``group_size``.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, norm_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if norm_by_std:
        adv = adv / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv.view(-1)


def all_equal_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """Bool per group: every reward within ``tol`` of the others (no learning signal)."""
    grouped = rewards.float().view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) <= tol
