"""Policy-gradient losses as pure per-token tensor functions, in a registry (``algo.policy_loss`` names one).

The contract: a variant is a function ``(PolicyInputs) -> PolicyTerms`` registered with
``@register_policy_loss(name, choose=..., acts_only_off_policy=...)``, like verl's ``register_policy_loss``. It
sees one micro-batch whole (current and old log-probs, advantages, the response mask, entropies, its token
choice, its config section) and returns the per-token loss with its per-token metrics (``clip_frac_low`` /
``clip_frac_high``: the share of response tokens each one marks is logged). Registering is the only step: the
config validates ``algo.policy_loss`` against this registry, and the test that every remedy changes training runs
over it.
- ``choose(cov, mask, algo, generator)`` (optional) picks tokens over the global batch before the update (the
  Cov methods, ``rpt.algo.token_choice``); its result reaches the loss as ``inputs.chosen``;
- ``acts_only_off_policy(algo)`` says the variant, as configured, does nothing while the importance ratio is 1,
  i.e. with one optimizer step per rollout; such a configuration is refused (``rpt.config``) instead of silently
  training plain GRPO.

Variants: ``ppo`` (PPO-clip with separate low/high epsilon: clip-higher when they differ, DAPO), ``gppo``
(clipped tokens keep a scaled gradient, arXiv 2508.07629), ``clip_cov`` and ``kl_cov`` (arXiv 2505.22617, as
verl implements them: Clip-Cov zeroes the clipped-objective term of its chosen tokens, KL-Cov uses the
*unclipped* ratio everywhere plus β·|log r| on its chosen tokens), ``gspo`` (the sequence-level ratio of GSPO,
arXiv 2507.18071). Differences from verl: the Cov choices are made once per rollout batch over the global batch
from the old-policy log-probs (verl: per micro-batch, current log-probs), so Clip-Cov cannot exclude tokens that
PPO clips later in the update; those have no gradient from the clipped objective anyway.

Aggregation (``algo.loss_agg``) is a *sum* of per-token terms times weights fixed from global counts before each
optimizer step, so the loss and its gradient do not depend on the micro-batch or data-parallel split:
- token-mean: every token weighs 1 / (tokens in the global mini-batch);
- seq-mean-token-mean: a token of sequence s weighs 1 / (len_s · sequences in the global mini-batch);
- seq-mean-token-sum-norm (Dr.GRPO): 1 / (max_response_len · sequences in the global mini-batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from rpt.algo.token_choice import clip_cov_mask, kl_cov_mask

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")  # algo.loss_agg


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


@dataclass(frozen=True)
class PolicyInputs:
    """What a policy loss sees of one micro-batch; per-token tensors are ``[b, t]`` aligned with ``tokens[:, 1:]``."""

    logp: torch.Tensor  # log-probs under the policy being trained (with gradient)
    old_logp: torch.Tensor  # log-probs under the policy that sampled (no gradient)
    adv: torch.Tensor  # advantages, per token (a response's value repeated, or per-token credit)
    mask: torch.Tensor  # bool: response tokens (everything else is padding or prompt)
    entropy: torch.Tensor  # entropy of the whole next-token distribution
    chosen: torch.Tensor | None  # bool: the variant's global token choice (``choose``), else None
    algo: Any  # the AlgoConfig section (clip ranges, coefficients)
    sample_logp: torch.Tensor | None = None  # log-probs under the sampler's own distribution (``Rollouts``)


CLIP_METRICS = ("clip_frac_low", "clip_frac_high")  # A<0 and ratio below 1-eps_low; A>0 and ratio above 1+eps_high


@dataclass(frozen=True)
class PolicyTerms:
    loss: torch.Tensor  # [b, t] per-token loss (before aggregation weights)
    metrics: dict[str, torch.Tensor]  # name -> [b, t] per-token values (0/1 flags); their mean over response
    # tokens is logged under the name (every variant returns the CLIP_METRICS)


@dataclass(frozen=True)
class PolicyLoss:
    name: str
    fn: Callable[[PolicyInputs], PolicyTerms]
    choose: Callable[..., torch.Tensor] | None  # global token choice before the update
    acts_only_off_policy: Callable[[Any], str | None]  # algo -> why it has no effect at ratio 1 (one optimizer
    # step per rollout), or None when it has one


POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str, choose: Callable | None = None,
                         acts_only_off_policy: bool | Callable[[Any], str | None] = False):
    """Register ``fn(inputs: PolicyInputs) -> PolicyTerms`` as ``algo.policy_loss=<name>``; ``acts_only_off_policy``
    is True (always), False (never) or a rule of the algo config that names the setting that would not act."""
    def register(fn):
        if callable(acts_only_off_policy):
            rule = acts_only_off_policy
        else:
            def rule(algo, always=acts_only_off_policy):
                return f"algo.policy_loss={name}" if always else None
        POLICY_LOSSES[name] = PolicyLoss(name, fn, choose, rule)
        return fn
    return register


def get_policy_loss(name: str) -> PolicyLoss:
    if name not in POLICY_LOSSES:
        raise ValueError(f"algo.policy_loss must be one of {sorted(POLICY_LOSSES)}, got {name!r}")
    return POLICY_LOSSES[name]


def _clips(x: PolicyInputs, ratio: torch.Tensor) -> tuple[float, float, dict[str, torch.Tensor]]:
    lo, hi = 1.0 - x.algo.clip_low, 1.0 + x.algo.clip_high
    return lo, hi, {"clip_frac_low": (x.adv < 0) & (ratio < lo), "clip_frac_high": (x.adv > 0) & (ratio > hi)}


def _clipped_objective(adv, ratio, lo, hi) -> torch.Tensor:
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))


def _scale_grad(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Value of ``x``; gradient scaled by ``beta``."""
    return beta * x + (1.0 - beta) * x.detach()


def _clip_higher(algo) -> str | None:
    """Clip-higher (DAPO): an upper clip bound apart from the lower one acts only on a moved policy."""
    if algo.clip_high != algo.clip_low:
        return f"clip-higher (algo.clip_high={algo.clip_high} != algo.clip_low={algo.clip_low})"
    return None


@register_policy_loss("ppo", acts_only_off_policy=_clip_higher)
def ppo_loss(x: PolicyInputs) -> PolicyTerms:
    ratio = torch.exp(x.logp - x.old_logp)
    lo, hi, clips = _clips(x, ratio)
    return PolicyTerms(_clipped_objective(x.adv, ratio, lo, hi), clips)


@register_policy_loss("gppo", acts_only_off_policy=True)
def gppo_loss(x: PolicyInputs) -> PolicyTerms:
    """Forward value = clip-higher PPO; in the clipped cases the bound keeps a gradient through ratio/sg(ratio),
    scaled by ``gppo_beta_low`` / ``gppo_beta_high``."""
    ratio = torch.exp(x.logp - x.old_logp)
    lo, hi, clips = _clips(x, ratio)
    through = ratio / ratio.detach()
    surrogate = torch.where(clips["clip_frac_low"], lo * _scale_grad(through, x.algo.gppo_beta_low),
                            torch.where(clips["clip_frac_high"], hi * _scale_grad(through, x.algo.gppo_beta_high),
                                        ratio))
    return PolicyTerms(-x.adv * surrogate, clips)


def _choose_clip_cov(cov, mask, algo, generator):
    return clip_cov_mask(cov, mask, algo.clip_cov_ratio, algo.clip_cov_low, algo.clip_cov_high, generator)


@register_policy_loss("clip_cov", choose=_choose_clip_cov)
def clip_cov_loss(x: PolicyInputs) -> PolicyTerms:
    """The clipped objective, zeroed (no value, no gradient) on the chosen tokens."""
    terms = ppo_loss(x)
    if x.chosen is None:
        return terms
    return PolicyTerms(torch.where(x.chosen, torch.zeros_like(terms.loss), terms.loss), terms.metrics)


def _choose_kl_cov(cov, mask, algo, generator):
    return kl_cov_mask(cov, mask, algo.kl_cov_ratio)


@register_policy_loss("kl_cov", choose=_choose_kl_cov, acts_only_off_policy=True)
def kl_cov_loss(x: PolicyInputs) -> PolicyTerms:
    """−A·ratio (no clipping) everywhere, plus ``kl_cov_coef``·|log π − log π_old| on the chosen tokens."""
    log_ratio = x.logp - x.old_logp
    loss = -x.adv * torch.exp(log_ratio)
    if x.chosen is not None:
        loss = loss + x.algo.kl_cov_coef * torch.where(x.chosen, log_ratio.abs(), torch.zeros_like(loss))
    unclipped = torch.zeros_like(x.mask)
    return PolicyTerms(loss, dict.fromkeys(CLIP_METRICS, unclipped))


@register_policy_loss("gspo", acts_only_off_policy=True)
def gspo_loss(x: PolicyInputs) -> PolicyTerms:
    """GSPO (arXiv 2507.18071, its GSPO-token form): one importance ratio per sequence, the geometric mean of its
    tokens' ratios s = exp(mean_t log(π/π_old)), clipped as a whole; each token carries s·π_t/sg(π_t), so the
    gradient is the sequence ratio times each token's score. Its paper clips s to [1 − 3e-4, 1 + 4e-4]
    (``algo=gspo``). At ratio 1 it trains like GRPO with seq-mean-token-mean: it acts only on a moved policy."""
    mask = x.mask.float()
    lengths = mask.sum(1, keepdim=True).clamp(min=1.0)
    seq_log_ratio = ((x.logp - x.old_logp) * mask).sum(1, keepdim=True) / lengths  # [b, 1]
    ratio = torch.exp(seq_log_ratio.detach() + x.logp - x.logp.detach())  # value s, gradient s·∇log π_t
    lo, hi, clips = _clips(x, ratio.detach().expand_as(x.logp))
    return PolicyTerms(_clipped_objective(x.adv, ratio, lo, hi), clips)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π || π_ref): exp(d) − d − 1 with d = ref − logp (≥ 0), 0 outside ``mask``.
    The difference is masked *before* ``exp``: at padding or prompt positions it can be large enough to overflow,
    and inf·0 in the weighted sum would be NaN."""
    d = torch.where(mask, ref_logp - logp, torch.zeros_like(logp))
    return torch.exp(d) - d - 1.0


def truncated_is_weight(x: PolicyInputs) -> torch.Tensor:
    """Truncated importance sampling (TIS, as verl and slime apply it): the per-token weight
    min(π_old / π_sampler, C), without gradient. It corrects the policy term for the gap between the sampler's
    probabilities (vLLM's kernels, another precision) and the trainer's, and the cap C keeps a token the sampler
    found unlikely from dominating the batch. The log-ratio is masked before ``exp`` (padding holds any value)."""
    log_ratio = (x.old_logp - x.sample_logp).masked_fill(~x.mask, 0.0)
    return log_ratio.exp().clamp(max=x.algo.tis_cap).detach()


def with_tis(terms: PolicyTerms, x: PolicyInputs) -> PolicyTerms:
    """The policy variant's terms with its policy term times the TIS weight when ``algo.tis_cap`` is set. Applied to
    the policy-gradient term only, as verl does: the terms feedback algorithms add afterwards (SDPO's distillation
    toward a teacher) are not estimates over the sampler's tokens and take no importance weight."""
    if not x.algo.tis_cap:
        return terms
    return replace(terms, loss=terms.loss * truncated_is_weight(x))


def token_losses(terms: PolicyTerms, x: PolicyInputs, ref_logp: torch.Tensor | None) -> torch.Tensor:
    """The per-token objective of one micro-batch: the terms' loss (the TIS-weighted policy term, ``with_tis``, and
    any feedback terms), minus the entropy bonus, plus the k3 KL penalty."""
    per_token = terms.loss
    if x.algo.entropy_coef:
        per_token = per_token - x.algo.entropy_coef * x.entropy
    if x.algo.kl_coef:
        per_token = per_token + x.algo.kl_coef * kl_k3(x.logp, ref_logp, x.mask)
    return per_token
