"""Policy-gradient losses as pure per-token tensor functions, in a registry (``algo.policy_loss`` names one).

A variant is a function ``(logp, old_logp, adv, algo, chosen) -> PolicyTerms`` registered with
``@register_policy_loss(name, choose=..., needs_moving_policy=...)``, like verl's ``register_policy_loss``:
- ``choose(cov, mask, algo, generator)`` (optional) picks tokens over the global batch before the update (the
  Cov methods); its result reaches the loss as ``chosen``;
- ``needs_moving_policy`` says the variant does nothing while the importance ratio is 1, i.e. with one optimizer
  step per rollout; such a configuration is refused (``rpt.config``) instead of silently training plain GRPO.

Variants: ``ppo`` (PPO-clip with separate low/high epsilon: clip-higher when they differ, DAPO), ``gppo``
(clipped tokens keep a scaled gradient, arXiv 2508.07629), ``clip_cov`` and ``kl_cov`` (arXiv 2505.22617, as
verl implements them: Clip-Cov zeroes the clipped-objective term of its chosen tokens, KL-Cov uses the
*unclipped* ratio everywhere plus β·|log r| on its chosen tokens). Differences from verl: the Cov choices are made
once per rollout batch over the global batch from the old-policy log-probs (verl: per micro-batch, current
log-probs), so Clip-Cov cannot exclude tokens that PPO clips later in the update; those have no gradient from
the clipped objective anyway.

Aggregation (``algo.loss_agg``) is a *sum* of per-token terms times weights fixed from global counts before each
optimizer step, so the loss and its gradient do not depend on the micro-batch or data-parallel split:
- token-mean: every token weighs 1 / (tokens in the global mini-batch);
- seq-mean-token-mean: a token of sequence s weighs 1 / (len_s · sequences in the global mini-batch);
- seq-mean-token-sum-norm (Dr.GRPO): 1 / (max_response_len · sequences in the global mini-batch).

Token choices (the first half of this file) are made over the *global* batch (every micro-batch and every
data-parallel rank), so the chosen tokens do not depend on how the batch is split: forking tokens (80/20,
arXiv 2506.01939) and the Clip-Cov / KL-Cov choices (arXiv 2505.22617) from the per-token covariance of log-prob
and advantage.

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
from dataclasses import dataclass

import torch

from rpt.config import AGG_MODES
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


@dataclass
class PolicyTerms:
    loss: torch.Tensor  # [b, t] per-token loss (before aggregation weights)
    clipped_low: torch.Tensor  # [b, t] bool: A<0 and ratio below 1-eps_low
    clipped_high: torch.Tensor  # [b, t] bool: A>0 and ratio above 1+eps_high


@dataclass(frozen=True)
class PolicyLoss:
    name: str
    fn: Callable[..., PolicyTerms]
    choose: Callable[..., torch.Tensor] | None  # global token choice before the update
    needs_moving_policy: bool  # no effect at ratio 1 (one optimizer step per rollout)


POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str, choose: Callable | None = None, needs_moving_policy: bool = False):
    def register(fn):
        POLICY_LOSSES[name] = PolicyLoss(name, fn, choose, needs_moving_policy)
        return fn
    return register


def get_policy_loss(name: str) -> PolicyLoss:
    if name not in POLICY_LOSSES:
        raise ValueError(f"algo.policy_loss must be one of {sorted(POLICY_LOSSES)}, got {name!r}")
    return POLICY_LOSSES[name]


def _ratio_and_clips(logp, old_logp, adv, algo):
    ratio = torch.exp(logp - old_logp)
    lo, hi = 1.0 - algo.clip_low, 1.0 + algo.clip_high
    return ratio, lo, hi, (adv < 0) & (ratio < lo), (adv > 0) & (ratio > hi)


def _clipped_objective(adv, ratio, lo, hi) -> torch.Tensor:
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))


def _scale_grad(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Value of ``x``; gradient scaled by ``beta``."""
    return beta * x + (1.0 - beta) * x.detach()


@register_policy_loss("ppo")
def ppo_loss(logp, old_logp, adv, algo, chosen=None) -> PolicyTerms:
    adv = adv.expand_as(logp)
    ratio, lo, hi, clipped_low, clipped_high = _ratio_and_clips(logp, old_logp, adv, algo)
    return PolicyTerms(_clipped_objective(adv, ratio, lo, hi), clipped_low, clipped_high)


@register_policy_loss("gppo", needs_moving_policy=True)
def gppo_loss(logp, old_logp, adv, algo, chosen=None) -> PolicyTerms:
    """Forward value = clip-higher PPO; in the clipped cases the bound keeps a gradient through ratio/sg(ratio),
    scaled by ``gppo_beta_low`` / ``gppo_beta_high``."""
    adv = adv.expand_as(logp)
    ratio, lo, hi, clipped_low, clipped_high = _ratio_and_clips(logp, old_logp, adv, algo)
    through = ratio / ratio.detach()
    surrogate = torch.where(clipped_low, lo * _scale_grad(through, algo.gppo_beta_low),
                            torch.where(clipped_high, hi * _scale_grad(through, algo.gppo_beta_high), ratio))
    return PolicyTerms(-adv * surrogate, clipped_low, clipped_high)


def _choose_clip_cov(cov, mask, algo, generator):
    return clip_cov_mask(cov, mask, algo.clip_cov_ratio, algo.clip_cov_low, algo.clip_cov_high, generator)


@register_policy_loss("clip_cov", choose=_choose_clip_cov)
def clip_cov_loss(logp, old_logp, adv, algo, chosen=None) -> PolicyTerms:
    """The clipped objective, zeroed (no value, no gradient) on the chosen tokens."""
    terms = ppo_loss(logp, old_logp, adv, algo)
    if chosen is not None:
        terms.loss = torch.where(chosen, torch.zeros_like(terms.loss), terms.loss)
    return terms


def _choose_kl_cov(cov, mask, algo, generator):
    return kl_cov_mask(cov, mask, algo.kl_cov_ratio)


@register_policy_loss("kl_cov", choose=_choose_kl_cov, needs_moving_policy=True)
def kl_cov_loss(logp, old_logp, adv, algo, chosen=None) -> PolicyTerms:
    """−A·ratio (no clipping) everywhere, plus ``kl_cov_coef``·|log π − log π_old| on the chosen tokens."""
    adv = adv.expand_as(logp)
    log_ratio = logp - old_logp
    loss = -adv * torch.exp(log_ratio)
    if chosen is not None:
        loss = loss + algo.kl_cov_coef * torch.where(chosen, log_ratio.abs(), torch.zeros_like(loss))
    unclipped = torch.zeros_like(loss, dtype=torch.bool)
    return PolicyTerms(loss, unclipped, unclipped)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π || π_ref): exp(d) − d − 1 with d = ref − logp (≥ 0), 0 outside ``mask``.
    The difference is masked *before* ``exp``: at padding or prompt positions it can be large enough to overflow,
    and inf·0 in the weighted sum would be NaN."""
    d = torch.where(mask, ref_logp - logp, torch.zeros_like(logp))
    return torch.exp(d) - d - 1.0


def token_losses(terms: PolicyTerms, logp, entropy, ref_logp, mask, algo) -> torch.Tensor:
    """The per-token objective of one micro-batch: policy term, minus the entropy bonus, plus the k3 KL penalty."""
    per_token = terms.loss
    if algo.entropy_coef:
        per_token = per_token - algo.entropy_coef * entropy
    if algo.kl_coef:
        per_token = per_token + algo.kl_coef * kl_k3(logp, ref_logp, mask)
    return per_token
