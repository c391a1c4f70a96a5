"""Token masks computed over the *global* batch (all micro-batches, all data-parallel ranks), so the selected
tokens do not depend on how the batch is split: forking tokens (80/20, arXiv 2506.01939), and the Clip-Cov /
KL-Cov token choices (arXiv 2505.22617) from the per-token covariance of log-prob and advantage.

The 80/20 paper's code takes the entropy quantile per micro-batch; we take it over the global batch, like TRL.
"""

from __future__ import annotations

import math

import torch


def forking_mask(entropy: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """Keep response tokens whose entropy is among the top ``rho`` share (ties at the threshold kept)."""
    values = entropy[mask]
    if values.numel() == 0 or rho >= 1.0:
        return mask.clone()
    threshold = torch.quantile(values.float(), 1.0 - rho)
    return mask & (entropy >= threshold)


def token_covariance(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cov_i = (log π_i − mean log π)(A_i − mean A) over the masked tokens; 0 elsewhere."""
    n = mask.sum().clamp(min=1)
    lp_mean = (logp * mask).sum() / n
    adv_mean = (adv * mask).sum() / n
    return torch.where(mask, (logp - lp_mean) * (adv - adv_mean), torch.zeros_like(logp))


def clip_cov_mask(cov: torch.Tensor, mask: torch.Tensor, ratio: float, low: float, high: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Clip-Cov: ⌊ratio·N⌋ tokens drawn uniformly from those with covariance in [low, high]."""
    n_pick = int(math.floor(ratio * int(mask.sum())))
    window = (mask & (cov >= low) & (cov <= high)).flatten().nonzero().squeeze(-1)
    chosen = torch.zeros_like(mask).flatten()
    if n_pick > 0 and window.numel() > 0:
        perm = torch.randperm(window.numel(), generator=generator)[:n_pick]
        chosen[window[perm]] = True
    return chosen.view_as(mask)


def kl_cov_mask(cov: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov: the top ⌊ratio·N⌋ tokens by covariance (at least one if ratio > 0 and N > 0)."""
    n_tokens = int(mask.sum())
    k = min(n_tokens, max(1, int(math.floor(ratio * n_tokens)))) if ratio > 0 and n_tokens else 0
    chosen = torch.zeros_like(mask).flatten()
    if k:
        scores = torch.where(mask, cov, torch.full_like(cov, float("-inf"))).flatten()
        chosen[torch.topk(scores, k).indices] = True
    return chosen.view_as(mask)
