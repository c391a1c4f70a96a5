"""Rollouts → the training batch: trainer-side log-probs and entropies (``policy_values``: the old policy, the
reference), and every per-token choice fixed over the *global* batch before the update (the forking mask, the
loss variant's Cov choice). ``build_batch`` returns the complete batch; nothing is filled in later.

Token t of a sequence is predicted from positions < t, so all per-token tensors here are ``[N, T-1]`` aligned with
``tokens[:, 1:]``. Rows come in GRPO groups of G consecutive sequences; micro-batches hold whole groups, so every
trainer forward (``trainer_forward``) can score a group over one copy of its prompt (``algo.share_prompt``). A
rank may hold no rows at all (dynamic sampling kept none of its groups): every function here still takes part in
the same collectives and returns empty ``[0, T-1]`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from rpt.algo.losses import get_policy_loss
from rpt.algo.masks import forking_mask, token_covariance
from rpt.model.forward import full_logits, logprobs_and_entropy
from rpt.model.shared_prefix import group_layout, shared_prompt_logprobs
from rpt.rollout.engine import Rollouts


@dataclass(frozen=True)
class PolicyValues:
    logp: torch.Tensor  # [N, T-1] log-prob of each next token at the sampling temperature
    entropy: torch.Tensor  # [N, T-1] entropy of the whole next-token distribution


def micro_batches(rows: range, size: int, group_size: int) -> list[range]:
    """``rows`` cut into chunks of at most ``size`` rows (at least one group), between groups."""
    size = max(group_size, size - size % group_size)
    return [range(s, min(s + size, rows.stop)) for s in range(rows.start, rows.stop, size)]


def trainer_forward(model, rollouts: Rollouts, rows: range, group_size: int, temperature: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies (``[len(rows), T-1]``) of ``rows`` under ``model`` at ``temperature``: over one copy
    of each group's prompt when ``group_size > 1`` and the rows are such groups, else a plain causal forward."""
    part = rollouts.select(slice(rows.start, rows.stop))
    layout = None
    if group_size > 1:
        layout = group_layout(part.tokens, part.prompt_lens, part.response_lens, group_size)
    if layout is None:
        logits = full_logits(model, part.tokens[:, :-1]) / temperature
        return logprobs_and_entropy(logits, part.tokens[:, 1:])
    return shared_prompt_logprobs(model, layout, len(part), part.tokens.shape[1] - 1, temperature)


@torch.no_grad()
def policy_values(model, rollouts: Rollouts, group_size: int, share_prompt: bool, temperature: float,
                  micro_batch: int) -> PolicyValues:
    """Log-probs and entropies of every rollout token under ``model`` (no gradient)."""
    shared = group_size if share_prompt else 1
    parts = [trainer_forward(model, rollouts, rows, shared, temperature)
             for rows in micro_batches(range(len(rollouts)), micro_batch, group_size)]
    if not parts:
        empty = torch.zeros(0, rollouts.tokens.shape[1] - 1, device=rollouts.tokens.device)
        return PolicyValues(empty, empty)
    return PolicyValues(torch.cat([lp for lp, _ in parts]), torch.cat([ent for _, ent in parts]))


@dataclass(frozen=True)
class RLBatch:
    rollouts: Rollouts
    mask: torch.Tensor  # [N, T-1] response tokens
    adv: torch.Tensor  # [N, 1] sequence advantages
    train_mask: torch.Tensor  # [N, T-1] tokens that receive gradient (forking mask applied)
    group_size: int  # G: consecutive rows answer the same prompt (micro- and mini-batches hold whole groups)
    old: Optional[PolicyValues]  # None only when the update's own first forward supplies them
    chosen: Optional[torch.Tensor] = None  # [N, T-1] the loss variant's token choice (Clip-Cov / KL-Cov)
    ref_logp: Optional[torch.Tensor] = None  # [N, T-1] reference policy (KL penalty)
    share_prompt: bool = True  # forwards score each group over one copy of its prompt

    @property
    def shared_group(self) -> int:
        """The group size ``trainer_forward`` shares prompts over (1: plain rows)."""
        return self.group_size if self.share_prompt else 1


def needs_old_values(algo, updates_per_rollout: int) -> bool:
    """Whether the batch needs a separate old-policy pass before the update. Not when there is exactly one
    optimizer step per rollout (same weights on the same tokens: the update's first forward gives the same
    values) and no loss part needs whole-batch statistics before the first backward (forking mask, Cov choice)."""
    return (not algo.reuse_update_forward or updates_per_rollout > 1 or algo.forking_rho > 0
            or get_policy_loss(algo.policy_loss).choose is not None)


def build_batch(rollouts: Rollouts, adv: torch.Tensor, old: Optional[PolicyValues], algo, group_size: int,
                generator: torch.Generator, ref_logp: Optional[torch.Tensor] = None) -> RLBatch:
    """The batch with every pre-update choice made over the global batch (collectives: every rank calls it)."""
    mask = rollouts.response_mask[:, 1:]
    adv = adv.view(-1, 1).to(mask.device)
    train_mask, chosen = mask, None
    if algo.forking_rho > 0:
        train_mask = forking_mask(old.entropy, mask, algo.forking_rho)
    policy_loss = get_policy_loss(algo.policy_loss)
    if policy_loss.choose is not None:
        chosen = policy_loss.choose(token_covariance(old.logp, adv.expand_as(old.logp), mask), mask, algo, generator)
    return RLBatch(rollouts, mask, adv, train_mask, group_size, old, chosen, ref_logp, algo.share_prompt)
