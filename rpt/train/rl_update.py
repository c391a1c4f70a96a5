"""One policy update over an ``RLBatch``: micro-batched forward/backward of the configured loss, one optimizer
step per PPO epoch. Micro-batch losses are weighted sums (weights fixed globally in ``rl_batch``), scaled by the
data-parallel size because megatron DDP averages gradients across ranks.

When the batch was built without the old-policy pass (``rl_batch.can_reuse_update_forward``), the first forward
supplies the old log-probs (detached: the ratio is exactly 1, as it would be against a separate pass with the
same weights), the entropies and the covariance statistics, so nothing downstream can tell the difference."""

from __future__ import annotations

import torch

from rpt.algo.losses import kl_k3, policy_terms
from rpt.algo.masks import token_covariance
from rpt.model.cpu_compat import shims_suspended
from rpt.runtime import dp_sum


def update(trainable, batch, algo, temperature: float, ppo_epochs: int, micro_batch: int, dp_size: int) -> dict:
    stats = {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "kl_to_old": 0.0, "loss": 0.0}
    total_tokens = max(dp_sum(float(batch.mask.sum())), 1.0)  # the whole data-parallel batch
    grad_norm, applied = 0.0, True
    for epoch in range(ppo_epochs):
        trainable.zero_grad()
        with shims_suspended():
            _accumulate_gradients(trainable, batch, algo, temperature, micro_batch, dp_size,
                                  stats if epoch == 0 else None, total_tokens)
        applied, grad_norm = trainable.step()
    stats = {key: dp_sum(value) for key, value in stats.items()}  # each rank summed its share of the batch
    stats.update(grad_norm=grad_norm, update_applied=float(applied))
    return stats


def _accumulate_gradients(trainable, batch, algo, temperature, micro_batch, dp_size, stats, total_tokens) -> None:
    """Forward/backward of every micro-batch; the first epoch's loss and clip/KL statistics go into ``stats``."""
    fill = batch.old_logp is None
    if fill:
        batch.old_logp = torch.zeros(batch.mask.shape, dtype=torch.float32, device=batch.tokens.device)
        batch.entropy = torch.zeros_like(batch.old_logp)
    for s, e in batch.micro_batches(micro_batch):
        logp, entropy = batch.forward(trainable.model, s, e, temperature)
        if fill:
            batch.old_logp[s:e] = logp.detach()
            batch.entropy[s:e] = entropy.detach()
        terms = policy_terms(logp, batch.old_logp[s:e], batch.adv[s:e], algo,
                             None if batch.detach_mask is None else batch.detach_mask[s:e],
                             None if batch.kl_cov_mask is None else batch.kl_cov_mask[s:e])
        per_token = terms.loss
        if algo.entropy_coef:
            per_token = per_token - algo.entropy_coef * entropy
        if algo.kl_coef:
            per_token = per_token + algo.kl_coef * kl_k3(logp, batch.ref_logp[s:e])
        loss = (per_token * batch.weights[s:e]).sum()
        (loss * dp_size).backward()
        if stats is not None:
            m = batch.mask[s:e]
            stats["loss"] += float(loss)
            stats["clip_frac_low"] += float((terms.clipped_low & m).sum()) / total_tokens
            stats["clip_frac_high"] += float((terms.clipped_high & m).sum()) / total_tokens
            stats["kl_to_old"] += float(((batch.old_logp[s:e] - logp.detach()) * m).sum()) / total_tokens
    if fill:
        batch.cov = token_covariance(batch.old_logp, batch.adv.expand_as(batch.old_logp), batch.mask)
