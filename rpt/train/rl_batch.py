"""Turn rollouts into a training batch: trainer-side log-probs and entropies (the "old" policy), and every
per-token quantity that must be fixed over the *global* batch before the update (aggregation weights, the
forking-token mask, Clip-Cov / KL-Cov choices, reference log-probs).

Token t of a sequence is predicted from positions < t, so all per-token tensors here are ``[N, T-1]`` aligned with
``tokens[:, 1:]``. Rows come in GRPO groups of G consecutive sequences; micro-batches hold whole groups, so every
trainer forward (``RLBatch.forward``) can score a group over one copy of its prompt (``algo.share_prompt``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from rpt.algo.losses import aggregation_weights
from rpt.algo.masks import clip_cov_mask, forking_mask, kl_cov_mask, token_covariance
from rpt.model.cpu_compat import shims_suspended
from rpt.model.forward import full_logits, logprobs_and_entropy
from rpt.model.shared_prefix import group_layout, shared_prompt_logprobs
from rpt.runtime import dp_sum
from rpt.rollout.engine import Rollouts


@dataclass
class RLBatch:
    tokens: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T-1] response tokens
    adv: torch.Tensor  # [N, 1]
    old_logp: torch.Tensor | None  # [N, T-1]; None until the update's own forward fills it (``reuse_update_forward``)
    entropy: torch.Tensor | None  # [N, T-1]; as old_logp
    sample_logp: torch.Tensor  # [N, T-1]
    train_mask: torch.Tensor  # [N, T-1] tokens that receive gradient (forking mask applied)
    weights: torch.Tensor | None  # [N, T-1] aggregation weights (global normalisation); set by build_batch
    detach_mask: torch.Tensor | None = None  # Clip-Cov
    kl_cov_mask: torch.Tensor | None = None  # KL-Cov
    ref_logp: torch.Tensor | None = None  # reference policy (KL penalty)
    cov: torch.Tensor | None = None  # per-token covariance statistics
    prompt_lens: torch.Tensor | None = None  # [N]
    group_size: int = 1  # G > 1: forwards share each group's prompt (``forward``)

    def micro_batches(self, size: int):
        """Row ranges of at most ``size`` sequences (at least one group), cut between groups."""
        size = max(self.group_size, size - size % self.group_size)
        for s in range(0, self.tokens.shape[0], size):
            yield s, min(s + size, self.tokens.shape[0])

    def forward(self, model, s: int, e: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies (``[e-s, T-1]``) of rows ``s:e`` under ``model`` at ``temperature``; over one copy of
        each group's prompt when the rows are groups sharing it, otherwise a plain causal forward."""
        tokens = self.tokens[s:e]
        layout = None
        if self.group_size > 1:
            layout = group_layout(tokens, self.prompt_lens[s:e], self.mask[s:e].sum(1), self.group_size)
        if layout is None:
            return logprobs_and_entropy(full_logits(model, tokens[:, :-1]) / temperature, tokens[:, 1:])
        return shared_prompt_logprobs(model, layout, e - s, tokens.shape[1] - 1, temperature)


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    width = max(p.tokens.shape[1] for p in parts)

    def pad(x, value):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    return Rollouts(torch.cat([pad(p.tokens, pad_id) for p in parts]), torch.cat([p.prompt_lens for p in parts]),
                    torch.cat([pad(p.response_mask, False) for p in parts]),
                    torch.cat([pad(p.sample_logprobs, 0.0) for p in parts]))


@shims_suspended()
@torch.no_grad()
def policy_stats(model, batch: RLBatch, temperature: float, micro_batch: int):
    """Log-probs and entropies of ``tokens[:, 1:]`` under ``model`` at the sampling temperature."""
    parts = [batch.forward(model, s, e, temperature) for s, e in batch.micro_batches(micro_batch)]
    return torch.cat([lp for lp, _ in parts]), torch.cat([ent for _, ent in parts])


def _global_values(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor across data-parallel ranks (for global quantiles and top-k)."""
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group()
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return x
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, x.cpu(), group=group)
    return torch.cat(parts).to(x.device)


def can_reuse_update_forward(algo, ppo_epochs: int) -> bool:
    """True when the old-policy log-probs may come from the update's own first forward instead of a separate pass:
    one PPO epoch (so they are the same weights on the same tokens) and no loss part that needs whole-batch
    statistics before the first backward (forking mask, Clip-Cov, KL-Cov)."""
    return (algo.reuse_update_forward and ppo_epochs == 1 and algo.forking_rho == 0
            and algo.policy_loss not in ("clip_cov", "kl_cov"))


def build_batch(model, rollouts: Rollouts, adv: torch.Tensor, algo, rollout_cfg, micro_batch: int,
                generator: torch.Generator, ref_model=None, old_from_update: bool = False) -> RLBatch:
    """The batch with every pre-update statistic; ``old_from_update`` skips the old-policy forward (see
    ``can_reuse_update_forward``): ``rl_update.update`` then fills ``old_logp`` / ``entropy`` / ``cov``."""
    tokens = rollouts.tokens
    mask = rollouts.response_mask[:, 1:]
    batch = RLBatch(tokens, mask, adv.view(-1, 1), old_logp=None, entropy=None,
                    sample_logp=rollouts.sample_logprobs[:, 1:], train_mask=mask, weights=None,
                    prompt_lens=rollouts.prompt_lens, group_size=rollout_cfg.group_size if algo.share_prompt else 1)
    if not old_from_update:
        batch.old_logp, batch.entropy = policy_stats(model, batch, rollout_cfg.temperature, micro_batch)
    old_logp, entropy = batch.old_logp, batch.entropy
    train_mask = mask
    if algo.forking_rho > 0:
        threshold_src = _global_values(entropy[mask])
        if threshold_src.numel():
            tau = torch.quantile(threshold_src.float(), 1.0 - algo.forking_rho)
            train_mask = mask & (entropy >= tau)
    batch.train_mask = train_mask
    batch.weights = aggregation_weights(train_mask, algo.loss_agg, dp_sum(float(train_mask.sum())),
                                        dp_sum(float(train_mask.any(1).sum())), float(rollout_cfg.max_new_tokens))
    if old_logp is not None:
        batch.cov = token_covariance(old_logp, batch.adv.expand_as(old_logp), mask)
    if algo.policy_loss == "clip_cov":
        batch.detach_mask = clip_cov_mask(batch.cov, mask, algo.clip_cov_ratio, algo.clip_cov_low,
                                          algo.clip_cov_high, generator)
    elif algo.policy_loss == "kl_cov":
        batch.kl_cov_mask = kl_cov_mask(batch.cov, mask, algo.kl_cov_ratio)
    if algo.kl_coef > 0:
        if ref_model is None:
            raise ValueError("algo.kl_coef > 0 needs a reference model")
        batch.ref_logp, _ = policy_stats(ref_model, batch, rollout_cfg.temperature, micro_batch)
    return batch


def forking_share(entropy: torch.Tensor, mask: torch.Tensor, rho: float = 0.2) -> float:
    """Mean entropy of the top-``rho`` tokens (the forking tokens), for logging."""
    chosen = forking_mask(entropy, mask, rho)
    return float(entropy[chosen].mean()) if chosen.any() else 0.0
