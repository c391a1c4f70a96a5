"""Rollouts → the training batch → the policy update.

The batch (first half): trainer-side log-probs and entropies (``policy_values``: the old policy, the reference),
and every per-token choice fixed over the *global* batch before the update (the forking mask, the loss variant's
Cov choice). ``build_batch`` returns the complete batch; nothing is filled in later.

The update (second half): ``ppo_epochs`` passes, each cut into mini-batches of whole groups with one optimizer
step per mini-batch (verl's ``ppo_mini_batch_size``; DAPO takes 16 steps per rollout). From the second optimizer
step on, the policy has moved away from the one that sampled, the importance ratio leaves 1, and the clip,
clip-higher, GPPO and KL-Cov terms act. Micro-batch losses are weighted sums with weights fixed from the *global*
counts of each mini-batch, scaled by the data-parallel size because megatron DDP averages gradients across ranks.

Token t of a sequence is predicted from positions < t, so all per-token tensors are ``[N, T-1]`` aligned with
``tokens[:, 1:]``. Rows come in GRPO groups of G consecutive sequences; micro- and mini-batches hold whole
groups, so every trainer forward (``trainer_forward``) can score a group over one copy of its prompt
(``algo.share_prompt``). A rank may hold no rows at all (dynamic sampling kept none of its groups): it still takes
part in every collective and every optimizer step (the mini-batch count is global), so megatron's gradient
all-reduce pairs up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rpt.algo.losses import (
    CLIP_METRICS,
    PolicyInputs,
    aggregation_weights,
    get_policy_loss,
    token_losses,
    with_tis,
)
from rpt.algo.token_choice import forking_mask, token_covariance
from rpt.distributed import dp_sum
from rpt.model.forward import LOGITS_CHUNK_TOKENS, sequence_logprobs
from rpt.model.shared_prefix import group_layout, shared_prompt_logprobs
from rpt.rollout.engine import Rollouts
from rpt.train.feedback import first_of
from rpt.train.micro_batches import plan_micro_batches


@dataclass(frozen=True)
class ForwardSettings:
    """How every trainer forward of a step runs: the old-policy and reference passes, the update, the analysis."""

    temperature: float  # the sampling temperature the log-probs and entropies are taken at
    micro_batch: int  # rows per forward (whole groups)
    max_tokens: int | None = None  # padded tokens per forward instead of ``micro_batch`` rows (None: rows)
    chunk_tokens: int = LOGITS_CHUNK_TOKENS  # tokens per output-layer chunk (0: all logits at once)


@dataclass(frozen=True)
class PolicyValues:
    logp: torch.Tensor  # [N, T-1] log-prob of each next token at the sampling temperature
    entropy: torch.Tensor  # [N, T-1] entropy of the whole next-token distribution


def trainer_forward(model, rollouts: Rollouts, rows: range, group_size: int, temperature: float,
                    chunk_tokens: int = LOGITS_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies (``[len(rows), T-1]``, zero outside the responses) of ``rows`` under ``model`` at
    ``temperature``: over one copy of each group's prompt when ``group_size > 1`` and the rows are such groups,
    else a plain causal forward over the rows cut to their longest sequence. The output layer runs on response
    tokens only, ``chunk_tokens`` at a time (``rpt.model.forward``)."""
    part = rollouts.select(slice(rows.start, rows.stop))
    width = part.tokens.shape[1] - 1
    layout = None
    if group_size > 1:
        layout = group_layout(part.tokens, part.prompt_lens, part.response_lens, group_size)
    if layout is not None:
        return shared_prompt_logprobs(model, layout, len(part), width, temperature, chunk_tokens)
    used = max(int((part.prompt_lens + part.response_lens).max()) - 1, 1) if len(part) else 1
    logp, entropy = sequence_logprobs(model, part.tokens[:, :used], part.tokens[:, 1:used + 1], temperature,
                                      part.response_mask[:, 1:used + 1], chunk_tokens)
    pad = torch.nn.functional.pad
    return pad(logp, (0, width - used)), pad(entropy, (0, width - used))


def forward_micro_batches(rollouts: Rollouts, rows: range, micro_batch: int, group_size: int, shared: int,
                          max_tokens: int | None) -> list[range]:
    """``rows`` cut into micro-batches of whole groups (``rpt.train.micro_batches``)."""
    return plan_micro_batches(rollouts.prompt_lens, rollouts.response_lens, rows, micro_batch, group_size,
                              shared > 1, max_tokens)


@torch.no_grad()
def policy_values(model, rollouts: Rollouts, group_size: int, share_prompt: bool,
                  forward: ForwardSettings) -> PolicyValues:
    """Log-probs and entropies of every rollout token under ``model`` (no gradient), in micro-batches of
    ``forward.micro_batch`` rows or, when set, of ``forward.max_tokens`` padded tokens."""
    shared = group_size if share_prompt else 1
    parts = [trainer_forward(model, rollouts, rows, shared, forward.temperature, forward.chunk_tokens)
             for rows in forward_micro_batches(rollouts, range(len(rollouts)), forward.micro_batch, group_size,
                                               shared, forward.max_tokens)]
    if not parts:
        empty = torch.zeros(0, rollouts.tokens.shape[1] - 1, device=rollouts.tokens.device)
        return PolicyValues(empty, empty)
    return PolicyValues(torch.cat([lp for lp, _ in parts]), torch.cat([ent for _, ent in parts]))


@dataclass(frozen=True)
class RLBatch:
    rollouts: Rollouts
    mask: torch.Tensor  # [N, T-1] response tokens
    adv: torch.Tensor  # [N, 1] per-response or [N, T-1] per-token advantages
    train_mask: torch.Tensor  # [N, T-1] tokens that receive gradient (forking mask applied)
    group_size: int  # G: consecutive rows answer the same prompt (micro- and mini-batches hold whole groups)
    old: PolicyValues | None  # None only when the update's own first forward supplies them
    chosen: torch.Tensor | None = None  # [N, T-1] the loss variant's token choice (Clip-Cov / KL-Cov)
    ref_logp: torch.Tensor | None = None  # [N, T-1] reference policy (KL penalty)
    share_prompt: bool = True  # forwards score each group over one copy of its prompt
    feedback: tuple = ()  # rpt.train.feedback.FeedbackTerm per feedback algorithm (refinements, a teacher)

    def feedback_of(self, kind: type):
        """This batch's feedback term of type ``kind`` (None when that algorithm is off)."""
        return first_of(kind, self.feedback)

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


def build_batch(rollouts: Rollouts, adv: torch.Tensor, old: PolicyValues | None, algo, group_size: int,
                generator: torch.Generator, ref_logp: torch.Tensor | None = None) -> RLBatch:
    """The batch with every pre-update choice made over the global batch (collectives: every rank calls it)."""
    mask = rollouts.response_mask[:, 1:]
    adv = (adv.view(-1, 1) if adv.dim() == 1 else adv).to(mask.device)  # per response, or per token (hicra)
    train_mask, chosen = mask, None
    if algo.forking_rho > 0:
        train_mask = forking_mask(old.entropy, mask, algo.forking_rho)
    policy_loss = get_policy_loss(algo.policy_loss)
    if policy_loss.choose is not None:
        chosen = policy_loss.choose(token_covariance(old.logp, adv.expand_as(old.logp), mask), mask, algo, generator)
    return RLBatch(rollouts, mask, adv, train_mask, group_size, old, chosen, ref_logp, algo.share_prompt)


@dataclass(frozen=True)
class UpdateResult:
    stats: dict  # loss, clip fractions, KL to the sampling-time policy, grad norm, share of steps applied
    old: PolicyValues | None  # the first forward's values, when the batch came without them


def mini_batches(n_rows: int, group_size: int, count: int) -> list[range]:
    """This rank's rows cut into ``count`` contiguous runs of whole groups (some may be empty)."""
    groups = np.array_split(np.arange(n_rows // group_size), count)
    return [range(int(g[0]) * group_size, (int(g[-1]) + 1) * group_size) if len(g) else range(0) for g in groups]


def update(trainable, batch: RLBatch, algo, forward: ForwardSettings, ppo_epochs: int, n_mini: int,
           max_response_len: int, dp_size: int) -> UpdateResult:
    """``ppo_epochs × n_mini`` optimizer steps (collectives: every rank calls it with the same counts); each
    mini-batch's backward runs in micro-batches of ``forward.micro_batch`` rows or, when set, ``forward.max_tokens``
    padded tokens (the loss weights are fixed per mini-batch, so the cut changes no number)."""
    temperature = forward.temperature
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
    first_forward = None
    if old_logp is None:  # one optimizer step: the first forward is the old policy (see ``needs_old_values``)
        first_forward = PolicyValues(torch.zeros_like(weights), torch.zeros_like(weights))
    policy_loss = get_policy_loss(algo.policy_loss)
    sums = dict.fromkeys(("loss", *CLIP_METRICS, "kl_to_old"), 0.0)
    grad_norms, applied = [], []
    for epoch in range(ppo_epochs):
        for rows in minis:
            trainable.zero_grad()
            for micro in forward_micro_batches(batch.rollouts, rows, forward.micro_batch, group, shared,
                                               forward.max_tokens):
                sl = slice(micro.start, micro.stop)
                logp, entropy = trainer_forward(trainable.model, batch.rollouts, micro, shared, temperature,
                                                forward.chunk_tokens)
                if first_forward is not None:
                    first_forward.logp[sl], first_forward.entropy[sl] = logp.detach(), entropy.detach()
                old = first_forward.logp[sl] if first_forward is not None else old_logp[sl]
                inputs = PolicyInputs(logp, old, batch.adv[sl].expand_as(logp), batch.mask[sl], entropy,
                                      None if batch.chosen is None else batch.chosen[sl], algo,
                                      batch.rollouts.sample_logprobs[sl, 1:])
                terms = with_tis(policy_loss.fn(inputs), inputs)
                for term in batch.feedback:  # Critique-GRPO's shaped refinements, SDPO's distillation, ...
                    terms = term.loss_terms(terms, inputs, trainable.model, batch.rollouts, micro, temperature)
                per_token = token_losses(terms, inputs, None if batch.ref_logp is None else batch.ref_logp[sl])
                loss = (per_token * weights[sl]).sum()
                (loss * dp_size).backward()
                if epoch == 0:
                    m = batch.mask[sl]
                    sums["loss"] += float(loss.detach())
                    for name in CLIP_METRICS:
                        sums[name] += float((terms.metrics[name] * m).sum())
                    sums["kl_to_old"] += float(((old - logp.detach()) * m).sum())
            ok, norm = trainable.step()
            applied.append(float(ok))
            grad_norms.append(norm)
    *values, n_tokens = dp_sum(*sums.values(), float(batch.mask.sum()))
    totals, n_tokens = dict(zip(sums, values, strict=True)), max(n_tokens, 1.0)
    stats = {"loss": totals.pop("loss") / n_mini, **{k: v / n_tokens for k, v in totals.items()},
             "grad_norm": float(np.mean(grad_norms)), "update_applied": float(np.mean(applied)),
             "optimizer_steps": float(len(applied))}
    return UpdateResult(stats, first_forward)
