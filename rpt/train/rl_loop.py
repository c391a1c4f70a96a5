"""The RL step shared by the `rpt` and `rl` stages.

``rl_step`` reads as its phases, each value returned by the one before (nothing filled in later), each phase timed
(``rpt.train.phase_timer``; logged as ``time/<phase>_s``): ``collect`` (generate, reward, Critique-GRPO's
refinements; dynamic-sampling refills) → advantages → old-policy and reference values → ``build_batch`` (global
token choices) → feedback algorithms' targets → ``update`` (mini-batched optimizer steps) → the metrics
(``rpt.train.rl_metrics``). Everything a step draws (prompts, sampling noise, Clip-Cov choices) is derived from
(seed, step) and the data cursor, so a run resumed from a checkpoint reproduces the uninterrupted one exactly.

Every rank takes the same collectives whatever its data: refills and "nothing to learn" are decided over the
whole data-parallel batch, and a rank left without groups still runs every reduction and optimizer step. The
stage around the step (building the models, the loop) is ``rpt.stages.rl_training``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rpt.algo.advantages import all_equal_groups, compute_advantages
from rpt.analysis.planning import planning_token_mask
from rpt.config import AlgoConfig, AnalysisConfig, RolloutConfig, TrainLoopConfig
from rpt.distributed import dp_max, dp_mean_of, dp_sum
from rpt.reward.custom import reward_metrics, take_metrics
from rpt.rollout.engine import Rollouts, SamplingParams, generate
from rpt.train.feedback import FeedbackAlgorithm, first_of
from rpt.train.phase_timer import PhaseTimer
from rpt.train.rl_metrics import (
    answer_metrics,
    diversity_metrics,
    kl_to_reference,
    overlap_with_init,
    planning_metrics,
    policy_metrics,
    resource_metrics,
    sample_rows,
)
from rpt.train.rl_update import (
    ForwardSettings,
    UpdateResult,
    build_batch,
    needs_old_values,
    policy_values,
    update,
)


def step_seed(seed: int, step: int, *more: int) -> int:
    """A seed derived from (run seed, step, ...): what a step draws does not depend on what ran before it."""
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(
        hash((seed, step, *more)) & 0xFFFFFFFFFFFF)).item())


@dataclass
class RLSetup:
    """What an RL stage trains with, built once by ``rpt.stages.rl_training.train``."""

    trainable: Any  # rpt.train.optim.Trainable
    task: Any  # rpt.tasks.base.Task
    rollout: RolloutConfig
    algo: AlgoConfig
    loop: TrainLoopConfig
    analysis: AnalysisConfig
    sampling: SamplingParams
    rt: Any  # rpt.runtime.Runtime
    seed: int
    ref_model: Any = None  # the initial policy, for the KL penalty
    init_model: Any = None  # the initial policy, for the forking-token overlap analysis
    logging: Any = None  # LoggingConfig: sample rollouts, peak FLOP/s for the MFU
    validator: Callable[[Any], dict] | None = None  # held-out accuracy every ``loop.eval_every`` steps
    grams: list[str] | None = None  # strategic grams (planning tokens); None: ``analysis.strategic_grams``
    feedback: tuple[FeedbackAlgorithm, ...] = ()  # algorithms that add work to a step (Critique-GRPO, SDPO)

    def __post_init__(self):
        if self.grams is None:
            self.grams = list(self.analysis.strategic_grams)

    def feedback_of(self, kind: type) -> Any:
        """This run's feedback algorithm of class ``kind`` (None: not on)."""
        return first_of(kind, self.feedback)

    @property
    def forward(self) -> ForwardSettings:
        """How every trainer forward of this stage runs (temperature, micro-batch, memory budget)."""
        return ForwardSettings(self.rollout.temperature, self.loop.micro_batch_size,
                               self.loop.max_tokens_per_micro_batch, self.loop.logits_chunk_tokens)


@dataclass(frozen=True)
class Collected:
    rollouts: Rollouts  # this rank's kept groups (possibly none)
    rewards: torch.Tensor  # [rows]
    items: list  # [rows // G] the task item of each kept group
    texts: list[str]  # [rows] the decoded responses
    answers: list  # [rows] their extracted answers (None: no parseable answer)
    stats: dict
    cursor: int  # the next prompt batch to draw
    refined: torch.Tensor | None = None  # [rows] bool: Critique-GRPO refinement rows


def collect(run: RLSetup, step: int, cursor: int, timer: PhaseTimer | None = None) -> Collected:
    """Roll out this rank's share of the step's prompts, G samples each. With dynamic sampling, groups whose
    rewards are all equal are dropped and further prompt batches drawn until every rank holds its share or
    ``algo.max_refills`` extra batches are spent (a global decision). Each drawn batch advances the cursor, so the
    epoch walk covers every item once per epoch whatever the refills. ``timer`` gets the generate, reward and
    refine phases."""
    timer = timer or PhaseTimer(("generate", "reward", "refine"))
    rt, algo, G = run.rt, run.algo, run.rollout.group_size
    per_rank = run.loop.prompts_per_step // rt.dp_size
    tok = run.task.tokenizer
    dynamic = algo.dynamic_sampling and step >= algo.dynamic_sampling_from_step  # the paper starts it at step 500
    kept, kept_rewards, kept_items, kept_texts, kept_answers, answered = [], [], [], [], [], []
    sampled, truncated, all_equal, groups_seen, n_kept = [], [], 0, 0, 0
    kept_refined = []
    extras: dict[str, list[float]] = {}  # a user's reward's extra metrics (rpt/reward/custom.py)
    for refill in range(algo.max_refills + 1 if dynamic else 1):
        items = run.task.items_for_step(cursor, per_rank * rt.dp_size, run.seed)[rt.dp_rank::rt.dp_size]
        cursor += 1
        prompts = [ids for it in items for ids in [run.task.prompt_ids(it)] * G]
        with timer.phase("generate"):
            drawn = generate(run.trainable.model.module, prompts, run.sampling,
                          step_seed(run.seed, step, refill, rt.dp_rank), rt.device)
        with timer.phase("reward"):
            texts = [tok.decode(drawn.response_ids(i)) for i in range(len(prompts))]
            take_metrics(run.task)  # (scoring outside this draw, e.g. validation or refinement, is not its metrics)
            rewards = torch.tensor([run.task.reward(items[i // G], text) for i, text in enumerate(texts)])
            take_metrics(run.task, into=extras)
        sampled.append(rewards)
        truncated.append(drawn.truncated.cpu())
        refined = torch.zeros(len(texts), dtype=torch.bool)
        for index, algorithm in enumerate(run.feedback):  # e.g. Critique-GRPO's refinements of failed responses
            with timer.phase("refine"):
                drawn, texts, rewards, replaced = algorithm.refine(
                    run.trainable.model.module, items, drawn, texts, rewards,
                    step_seed(run.seed, step, refill, rt.dp_rank, 1 + index), rt.device)
                refined |= replaced
        with timer.phase("reward"):
            answers = [run.task.extract(text) for text in texts]  # parsed once per response
        answered += [answer is not None for answer in answers]
        equal = all_equal_groups(rewards, G, algo.dynamic_sampling_tol)
        all_equal, groups_seen = all_equal + int(equal.sum()), groups_seen + len(items)
        keep_group = ~equal if dynamic else torch.ones_like(equal)
        keep = keep_group.repeat_interleave(G)
        kept.append(drawn.select(keep.to(drawn.tokens.device)))
        kept_rewards.append(rewards[keep])
        kept_refined.append(refined[keep])
        kept_items += [it for it, k in zip(items, keep_group.tolist(), strict=True) if k]
        kept_texts += [text for text, k in zip(texts, keep.tolist(), strict=True) if k]
        kept_answers += [answer for answer, k in zip(answers, keep.tolist(), strict=True) if k]
        n_kept += int(keep.sum()) // G
        if not dynamic or dp_sum(min(n_kept, per_rank)) >= run.loop.prompts_per_step:
            break
    rollouts = Rollouts.concat(kept, tok.pad_id).select(slice(0, per_rank * G))
    rewards = torch.cat(kept_rewards)[:per_rank * G]
    sampled = torch.cat(sampled)
    shares = dp_sum(all_equal, groups_seen)
    mean = dp_mean_of(sampled)
    stats = {"all_equal_share": shares[0] / max(shares[1], 1.0), "refills": refill, "reward_mean": mean,
             "reward_std": max(dp_mean_of(sampled.double() ** 2) - mean**2, 0.0) ** 0.5,
             "accuracy": dp_mean_of(run.task.is_correct(sampled).float()),
             "truncated_share": dp_mean_of(torch.cat(truncated).float()),
             "no_answer_share": 1.0 - dp_mean_of(torch.tensor(answered, dtype=torch.float32)),
             **reward_metrics(run.task, extras)}
    return Collected(rollouts, rewards, kept_items[:per_rank], kept_texts[:per_rank * G],
                     kept_answers[:per_rank * G], stats, cursor, torch.cat(kept_refined)[:per_rank * G])


RL_PHASES = ("generate", "reward", "refine", "advantages", "old_policy", "reference", "batch", "feedback",
             "update", "policy_metrics", "planning_metrics", "overlap", "diversity", "answers", "resources",
             "validation", "samples")  # the timed phases of ``rl_step``, in order (``time/<phase>_s``)


def rl_step(run: RLSetup, step: int, cursor: int) -> tuple[dict, int]:
    """One RL step; returns its metrics and the data cursor after it."""
    timer = PhaseTimer(RL_PHASES, run.rt.device)
    collected = collect(run, step, cursor, timer)
    rollouts, G, algo, model = collected.rollouts, run.rollout.group_size, run.algo, run.trainable.model
    temp = run.rollout.temperature
    micro, forward, feedback = run.loop.micro_batch_size, run.forward, run.feedback
    with timer.phase("advantages"):
        planning = planning_token_mask(rollouts.tokens, rollouts.response_mask, run.task.tokenizer, run.grams)[:, 1:]
        adv = compute_advantages(collected.rewards, G, algo, planning)
        learns = has_signal(run, adv)
    old = ref_logp = None
    if not learns or needs_old_values(algo, run.loop.updates_per_rollout()):
        with timer.phase("old_policy"):
            old = policy_values(model, rollouts, G, algo.share_prompt, forward)
    if algo.kl_coef:
        with timer.phase("reference"):
            ref_logp = policy_values(run.ref_model, rollouts, G, algo.share_prompt, forward).logp
    with timer.phase("batch"):  # global token choices (forking mask, Clip-Cov / KL-Cov)
        choice_gen = torch.Generator().manual_seed(step_seed(run.seed, step, 7))
        batch = build_batch(rollouts, adv, old, algo, G, choice_gen, ref_logp)
    if feedback:
        with timer.phase("feedback"):  # refinement tokens, teacher targets
            for f in feedback:
                batch = f.prepare(batch, collected, micro, temp)
    with timer.phase("update"):
        result = update(run.trainable, batch, algo, forward, run.loop.ppo_epochs, run.loop.mini_batches,
                        run.rollout.max_new_tokens, run.rt.dp_size) if learns else NO_UPDATE
        for f in feedback:
            f.after_update()
    values = old if old is not None else result.old
    metrics = {**collected.stats, **result.stats, "lr": run.trainable.lr,
               "tokens_per_s": dp_sum(float(rollouts.response_mask.sum())) / timer.elapsed(),
               # the step's compute in tokens (every pass re-reads prompt + response): the scaling fit's x axis
               "rollout_tokens": dp_sum(float((rollouts.prompt_lens + rollouts.response_lens).sum()))}
    with timer.phase("policy_metrics"):
        metrics.update(policy_metrics(batch, values, collected.rewards))
        if ref_logp is not None:
            metrics.update(kl_to_reference(values, ref_logp, batch.mask))
        for f in feedback:
            metrics.update(f.metrics(batch, values, collected))
    with timer.phase("planning_metrics"):
        metrics.update(planning_metrics(run, batch.mask, planning, values, collected.texts))
    if run.init_model is not None and due(run.analysis.overlap_every, step):
        with timer.phase("overlap"):
            metrics.update(overlap_with_init(run, rollouts, batch.mask, values))
    if due(run.analysis.diversity_every, step):
        with timer.phase("diversity"):
            metrics.update(diversity_metrics(run, collected))
    with timer.phase("answers"):
        metrics.update(answer_metrics(run, collected))
    with timer.phase("resources"):
        metrics.update(resource_metrics(run, rollouts, timer.seconds["update"] if learns else 0.0))
    if run.validator is not None and due(run.loop.eval_every, step + 1):
        with timer.phase("validation"):
            metrics.update(run.validator(run.trainable.model.module))
    if run.logging is not None and due(run.logging.sample_every, step + 1):
        with timer.phase("samples"):
            metrics["samples"] = sample_rows(run, collected, step + 1)
    metrics.update(timer.metrics())
    return metrics, collected.cursor


NO_UPDATE = UpdateResult({"loss": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "kl_to_old": 0.0,
                          "grad_norm": 0.0, "update_applied": 0.0, "optimizer_steps": 0.0}, None)
# the step's result when no group carries a signal anywhere: an Adam step on zero gradients would still move weights


def has_signal(run: RLSetup, adv: torch.Tensor) -> bool:
    """Whether the step trains: some advantage is non-zero on some rank, or a term that needs none is on (an
    entropy bonus, a KL penalty, SDPO's teacher)."""
    nonzero = dp_max(float(adv.abs().max()) if adv.numel() else 0.0) > 0
    without_advantage = any(f.trains_without_advantage for f in run.feedback)
    return nonzero or bool(run.algo.entropy_coef or run.algo.kl_coef) or without_advantage


def due(every: int, count: int) -> bool:
    """Whether a schedule of ``every`` steps (0: never) fires at ``count``."""
    return bool(every) and count % every == 0
