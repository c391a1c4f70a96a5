"""Per-token choices made over the *global* batch (every micro-batch and every data-parallel rank) before the
update, so the chosen tokens do not depend on how the batch is split: forking tokens (80/20, arXiv 2506.01939)
and the Clip-Cov / KL-Cov choices (arXiv 2505.22617) from the per-token covariance of log-prob and advantage.
These issue collectives (every rank calls them); the losses that use them (``rpt.algo.losses``) stay pure.

Counts are exact: the top ``k`` tokens are taken with ``torch.topk`` over the gathered values (never a quantile
threshold, which fails above 2^24 values and keeps every tied token: with all entropies equal a threshold keeps
100% of them). The 80/20 paper's code takes its quantile per micro-batch and verl its Cov choices per
micro-batch; we take all three over the global batch, as TRL does for the entropy mask. Ties are broken by
position, so a one-process run and a DP=2 run of the same batch choose the same number of tokens and, except
among exactly tied values or for Clip-Cov's random draw (same distribution, different order), the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rpt.distributed import dp_gather, dp_sum


def _scatter_global(chosen_global: torch.Tensor, offset: int, mask: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a choice over the gathered ``values[mask]`` of every rank, back in ``mask``'s shape."""
    out = torch.zeros_like(mask)
    out[mask] = chosen_global[offset:offset + int(mask.sum())].to(mask.device)
    return out


def top_k_mask(scores: torch.Tensor, mask: torch.Tensor, count: Callable[[int], int]) -> torch.Tensor:
    """The ``count(N)`` masked tokens with the largest ``scores`` among the N of the global batch."""
    values, offset = dp_gather(scores[mask].float())
    k = min(count(values.numel()), values.numel())
    chosen = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        chosen[torch.topk(values, k, sorted=False).indices] = True
    return _scatter_global(chosen, offset, mask)


def forking_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """The top ``⌈rho·N⌉`` response tokens by entropy in the global batch (all of them when ``rho >= 1``)."""
    if rho >= 1.0:
        return mask.clone()
    return top_k_mask(entropy, mask, lambda n: math.ceil(rho * n))


def token_covariance(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cov_i = (log π_i − mean log π)(A_i − mean A), the means over the global batch's masked tokens; 0 elsewhere."""
    m = mask.float()
    n, lp_sum, adv_sum = dp_sum(float(m.sum()), float((logp * m).sum()), float((adv * m).sum()))
    n = max(n, 1.0)
    return torch.where(mask, (logp - lp_sum / n) * (adv - adv_sum / n), torch.zeros_like(logp))


def cov_count(ratio: float, n_tokens: int) -> int:
    """How many tokens a Cov method picks: ``max(1, ⌊ratio·N⌋)`` when ``ratio > 0`` (verl's rule: a batch smaller
    than 1/ratio tokens still gets one), capped at N."""
    return min(n_tokens, max(1, math.floor(ratio * n_tokens))) if ratio > 0 and n_tokens else 0


def clip_cov_mask(cov: torch.Tensor, mask: torch.Tensor, ratio: float, low: float, high: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Clip-Cov: ``cov_count(ratio, N)`` tokens drawn uniformly (with ``generator``, seeded alike on every rank)
    among the global batch's tokens whose covariance lies in the open window (low, high)."""
    values, offset = dp_gather(cov[mask].float())
    window = ((values > low) & (values < high)).nonzero().squeeze(-1)
    k = min(cov_count(ratio, values.numel()), window.numel())
    chosen = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        chosen[window[torch.randperm(window.numel(), generator=generator)[:k].to(window.device)]] = True
    return _scatter_global(chosen, offset, mask)


def kl_cov_mask(cov: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov: the top ``cov_count(ratio, N)`` tokens of the global batch by covariance."""
    return top_k_mask(cov, mask, lambda n: cov_count(ratio, n))
