"""The policy update over an ``RLBatch``: ``ppo_epochs`` passes, each cut into mini-batches of whole groups with
one optimizer step per mini-batch (verl's ``ppo_mini_batch_size``; DAPO takes 16 steps per rollout). From the
second optimizer step on, the policy has moved away from the one that sampled, the importance ratio leaves 1,
and the clip, clip-higher, GPPO and KL-Cov terms act.

Every rank takes the same number of optimizer steps (the mini-batch count is global; a rank whose share of a
mini-batch is empty still steps, so megatron's gradient all-reduce pairs up). Micro-batch losses are weighted
sums with weights fixed from the *global* counts of each mini-batch, scaled by the data-parallel size because
megatron DDP averages gradients across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from rpt.algo.losses import aggregation_weights, get_policy_loss, token_losses
from rpt.distributed import dp_sum
from rpt.train.rl_batch import PolicyValues, RLBatch, micro_batches, trainer_forward


@dataclass(frozen=True)
class UpdateResult:
    stats: dict  # loss, clip fractions, KL to the sampling-time policy, grad norm, share of steps applied
    old: Optional[PolicyValues]  # the first forward's values, when the batch came without them


def mini_batches(n_rows: int, group_size: int, count: int) -> list[range]:
    """This rank's rows cut into ``count`` contiguous runs of whole groups (some may be empty)."""
    groups = np.array_split(np.arange(n_rows // group_size), count)
    return [range(int(g[0]) * group_size, (int(g[-1]) + 1) * group_size) if len(g) else range(0) for g in groups]


def update(trainable, batch: RLBatch, algo, temperature: float, ppo_epochs: int, n_mini: int, micro_batch: int,
           max_response_len: int, dp_size: int) -> UpdateResult:
    """``ppo_epochs × n_mini`` optimizer steps (collectives: every rank calls it with the same counts)."""
    group, shared = batch.group_size, batch.shared_group
    minis = mini_batches(len(batch.rollouts), group, n_mini)
    local = [v for rows in minis for v in (float(batch.train_mask[rows.start:rows.stop].sum()),
                                             float(batch.train_mask[rows.start:rows.stop].any(1).sum()))]
    counts = dp_sum(*local, 0.0)[:-1]  # a trailing 0 keeps the result a list even for one mini-batch
    weights = torch.zeros_like(batch.mask, dtype=torch.float32)
    for i, rows in enumerate(minis):
        sl = slice(rows.start, rows.stop)
        weights[sl] = aggregation_weights(batch.train_mask[sl], algo.loss_agg, counts[2 * i], counts[2 * i + 1],
                                          float(max_response_len))
    old_logp = None if batch.old is None else batch.old.logp
    filled = None
    if old_logp is None:  # one optimizer step: the first forward is the old policy (see ``needs_old_values``)
        filled = PolicyValues(torch.zeros_like(weights), torch.zeros_like(weights))
    policy_loss = get_policy_loss(algo.policy_loss)
    sums = {"loss": 0.0, "clipped_low": 0.0, "clipped_high": 0.0, "kl_to_old": 0.0}
    grad_norms, applied = [], []
    for epoch in range(ppo_epochs):
        for rows in minis:
            trainable.zero_grad()
            for micro in micro_batches(rows, micro_batch, group):
                sl = slice(micro.start, micro.stop)
                logp, entropy = trainer_forward(trainable.model, batch.rollouts, micro, shared, temperature)
                if filled is not None:
                    filled.logp[sl], filled.entropy[sl] = logp.detach(), entropy.detach()
                old = filled.logp[sl] if filled is not None else old_logp[sl]
                terms = policy_loss.fn(logp, old, batch.adv[sl], algo,
                                       None if batch.chosen is None else batch.chosen[sl])
                ref = None if batch.ref_logp is None else batch.ref_logp[sl]
                per_token = token_losses(terms, logp, entropy, ref, batch.mask[sl], algo)
                loss = (per_token * weights[sl]).sum()
                (loss * dp_size).backward()
                if epoch == 0:
                    m = batch.mask[sl]
                    sums["loss"] += float(loss)
                    sums["clipped_low"] += float((terms.clipped_low & m).sum())
                    sums["clipped_high"] += float((terms.clipped_high & m).sum())
                    sums["kl_to_old"] += float(((old - logp.detach()) * m).sum())
            ok, norm = trainable.step()
            applied.append(float(ok))
            grad_norms.append(norm)
    loss, low, high, kl, tokens = dp_sum(sums["loss"], sums["clipped_low"], sums["clipped_high"], sums["kl_to_old"],
                                         float(batch.mask.sum()))
    tokens = max(tokens, 1.0)
    stats = {"loss": loss / n_mini, "clip_frac_low": low / tokens, "clip_frac_high": high / tokens,
             "kl_to_old": kl / tokens, "grad_norm": float(np.mean(grad_norms)),
             "update_applied": float(np.mean(applied)), "optimizer_steps": float(len(applied))}
    return UpdateResult(stats, filled)
