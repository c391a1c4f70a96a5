"""Policy-gradient losses for GRPO-style training, as pure per-token tensor functions.

Variants (``algo.policy_loss``): PPO-clip with separate low/high clip (clip-higher, DAPO), GPPO (clipped tokens
keep a scaled gradient, arXiv 2508.07629), Clip-Cov (gradient detached on chosen tokens) and KL-Cov
(β·|log π − log π_old| on chosen tokens) from arXiv 2505.22617.

Aggregation (``algo.loss_agg``) is a *sum* of per-token terms times weights that were fixed from global batch
counts before the update, so the loss value and gradient do not depend on the micro-batch or data-parallel split:
- token-mean: every token weighs 1 / (tokens in the global batch);
- seq-mean-token-mean: a token of sequence s weighs 1 / (len_s · sequences in the global batch);
- seq-mean-token-sum-norm (Dr.GRPO): 1 / (max_response_len · sequences in the global batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregation_weights(mask: torch.Tensor, mode: str, global_tokens: float, global_seqs: float,
                        norm_len: float) -> torch.Tensor:
    """Per-token weights ``[b, t]`` whose weighted sum over the global batch is the aggregated loss."""
    m = mask.float()
    if mode == "token-mean":
        return m / max(global_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        return m / (m.sum(1, keepdim=True).clamp(min=1.0) * max(global_seqs, 1.0))
    if mode == "seq-mean-token-sum-norm":
        return m / (norm_len * max(global_seqs, 1.0))
    raise ValueError(f"algo.loss_agg must be one of {AGG_MODES}, got {mode!r}")


def _scale_grad(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Value of ``x``; gradient scaled by ``beta``."""
    return beta * x + (1.0 - beta) * x.detach()


@dataclass
class PolicyTerms:
    loss: torch.Tensor  # [b, t] per-token loss (before aggregation weights)
    clipped_low: torch.Tensor  # [b, t] bool: A<0 and ratio below 1-eps_low
    clipped_high: torch.Tensor  # [b, t] bool: A>0 and ratio above 1+eps_high
    ratio: torch.Tensor  # [b, t]


def policy_terms(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, algo,
                 detach_mask: torch.Tensor | None = None, kl_cov_mask: torch.Tensor | None = None) -> PolicyTerms:
    """Per-token policy loss for the configured variant. ``adv`` broadcasts to ``logp``'s shape."""
    adv = adv.expand_as(logp)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    lo, hi = 1.0 - algo.clip_low, 1.0 + algo.clip_high
    clipped_low = (adv < 0) & (ratio < lo)
    clipped_high = (adv > 0) & (ratio > hi)
    if algo.policy_loss == "gppo":
        # forward value = clip-higher PPO; in clipped cases the bound keeps a gradient through ratio/sg(ratio)
        through = ratio / ratio.detach()
        surrogate = torch.where(clipped_low, lo * _scale_grad(through, algo.gppo_beta_low),
                                torch.where(clipped_high, hi * _scale_grad(through, algo.gppo_beta_high), ratio))
        loss = -adv * surrogate
    else:
        if algo.policy_loss == "clip_cov" and detach_mask is not None:
            ratio = torch.where(detach_mask, ratio.detach(), ratio)
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))
        if algo.policy_loss == "kl_cov" and kl_cov_mask is not None:
            loss = loss + algo.kl_cov_coef * torch.where(kl_cov_mask, log_ratio.abs(), torch.zeros_like(loss))
    if algo.policy_loss not in ("ppo", "gppo", "clip_cov", "kl_cov"):
        raise ValueError(f"algo.policy_loss must be ppo, gppo, clip_cov or kl_cov, got {algo.policy_loss!r}")
    return PolicyTerms(loss, clipped_low, clipped_high, ratio)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π || π_ref): exp(ref − logp) − (ref − logp) − 1 (≥ 0, unbiased)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0
