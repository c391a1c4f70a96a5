"""The RL step shared by the `rpt` and `rl` stages, and the stage around it.

One step, each value returned by the one before (nothing filled in later):
``collect`` (rollouts and rewards, with dynamic-sampling refills) → ``compute_advantages`` → ``policy_values``
(old policy, reference) → ``build_batch`` (global token choices) → ``update`` (mini-batched optimizer steps) →
``step_metrics``. Everything a step draws (prompts, sampling noise, Clip-Cov choices) is derived from (seed, step)
and the data cursor, so a run resumed from a checkpoint reproduces the uninterrupted one exactly.

Every rank takes the same collectives whatever its data: refills and "nothing to learn" are decided over the
whole data-parallel batch, and a rank left without groups still runs every reduction and optimizer step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rpt.algo.advantages import all_equal_groups, compute_advantages
from rpt.algo.losses import forking_mask, kl_k3, token_covariance
from rpt.analysis.diversity import group_diversity
from rpt.analysis.planning import gram_counts, mine_strategic_grams, planning_token_mask, shannon_entropy
from rpt.checkpoint import latest_step_dir
from rpt.config import AlgoConfig, AnalysisConfig, RolloutConfig, RootConfig, TrainLoopConfig
from rpt.distributed import dp_max, dp_mean_of, dp_sum, gather_objects
from rpt.model.footprint import model_vocab
from rpt.model.loading import checkpoint_dir, load_eval_model
from rpt.reward.answer import extract_answer
from rpt.rollout.engine import Rollouts, SamplingParams, generate
from rpt.train.loop import LoopSpec, run_loop
from rpt.train.no_answer import NoAnswerWatch
from rpt.train.optim import build_trainable
from rpt.train.refinement import Refiner
from rpt.train.rl_update import (
    PolicyValues,
    UpdateResult,
    build_batch,
    needs_old_values,
    policy_values,
    update,
)
from rpt.train.self_distill import SelfDistiller

log = logging.getLogger(__name__)


def _step_seed(seed: int, step: int, *more: int) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(
        hash((seed, step, *more)) & 0xFFFFFFFFFFFF)).item())


@dataclass
class RLSetup:
    """What an RL stage trains with, built once by ``train``."""

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
    refiner: Any = None  # Critique-GRPO refinements (rpt.train.refinement.Refiner), algo.critique
    self_distill: Any = None  # SDPO teacher (rpt.train.self_distill.SelfDistiller), algo.sdpo

    def __post_init__(self):
        if self.grams is None:
            self.grams = list(self.analysis.strategic_grams)

    @property
    def n_mini(self) -> int:
        """Optimizer steps per epoch: prompts per step over prompts per mini-batch."""
        return self.loop.prompts_per_step // (self.loop.ppo_mini_batch_size or self.loop.prompts_per_step)

    @property
    def forward_budget(self) -> dict:
        """The memory budget of every trainer forward (keywords of ``policy_values`` and ``update``)."""
        return {"max_tokens": self.loop.max_tokens_per_micro_batch, "chunk_tokens": self.loop.logits_chunk_tokens}


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


def collect(run: RLSetup, step: int, cursor: int) -> Collected:
    """Roll out this rank's share of the step's prompts, G samples each. With dynamic sampling, groups whose
    rewards are all equal are dropped and further prompt batches drawn until every rank holds its share or
    ``algo.max_refills`` extra batches are spent (a global decision). Each drawn batch advances the cursor, so the
    epoch walk covers every item once per epoch whatever the refills."""
    rt, algo, G = run.rt, run.algo, run.rollout.group_size
    per_rank = run.loop.prompts_per_step // rt.dp_size
    tok = run.task.tokenizer
    dynamic = algo.dynamic_sampling and step >= algo.dynamic_sampling_from_step  # the paper starts it at step 500
    kept, kept_rewards, kept_items, kept_texts, kept_answers, answered = [], [], [], [], [], []
    sampled, truncated, all_equal, groups_seen, n_kept = [], [], 0, 0, 0
    kept_refined = []
    for refill in range(algo.max_refills + 1 if dynamic else 1):
        items = run.task.items_for_step(cursor, per_rank * rt.dp_size, run.seed)[rt.dp_rank::rt.dp_size]
        cursor += 1
        prompts = [ids for it in items for ids in [run.task.prompt_ids(it)] * G]
        ro = generate(run.trainable.model.module, prompts, run.sampling,
                      _step_seed(run.seed, step, refill, rt.dp_rank), rt.device)
        texts = [tok.decode(ro.response_ids(i)) for i in range(len(prompts))]
        rewards = torch.tensor([run.task.reward(items[i // G], text) for i, text in enumerate(texts)])
        sampled.append(rewards)
        truncated.append(ro.truncated.cpu())
        refined = torch.zeros(len(texts), dtype=torch.bool)
        if run.refiner is not None:  # Critique-GRPO: refinements replace failed responses of gated groups
            ro, texts, rewards, refined = run.refiner(run.trainable.model.module, items, ro, texts, rewards,
                                                      _step_seed(run.seed, step, refill, rt.dp_rank, 1), rt.device)
        answers = [extract_answer(text) for text in texts]  # parsed once per response
        answered += [answer is not None for answer in answers]
        equal = all_equal_groups(rewards, G, algo.dynamic_sampling_tol)
        all_equal, groups_seen = all_equal + int(equal.sum()), groups_seen + len(items)
        keep_group = ~equal if dynamic else torch.ones_like(equal)
        keep = keep_group.repeat_interleave(G)
        kept.append(ro.select(keep.to(ro.tokens.device)))
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
             "no_answer_share": 1.0 - dp_mean_of(torch.tensor(answered, dtype=torch.float32))}
    return Collected(rollouts, rewards, kept_items[:per_rank], kept_texts[:per_rank * G],
                     kept_answers[:per_rank * G], stats, cursor, torch.cat(kept_refined)[:per_rank * G])


def rl_step(run: RLSetup, step: int, cursor: int) -> tuple[dict, int]:
    """One RL step; returns its metrics and the data cursor after it."""
    t0 = time.perf_counter()
    got = collect(run, step, cursor)
    rollouts, G, algo, model = got.rollouts, run.rollout.group_size, run.algo, run.trainable.model
    t_rollout = time.perf_counter() - t0
    t1 = time.perf_counter()
    planning = planning_token_mask(rollouts.tokens, rollouts.response_mask, run.task.tokenizer, run.grams)[:, 1:]
    adv = compute_advantages(got.rewards, G, algo, planning)
    learn = dp_max(float(adv.abs().max()) if adv.numel() else 0.0) > 0 or bool(algo.entropy_coef or algo.kl_coef)
    learn = learn or run.self_distill is not None  # the teacher's signal does not need reward differences
    feedback = [f for f in (run.refiner, run.self_distill) if f is not None]
    updates = run.loop.ppo_epochs * run.n_mini
    mb, temp = run.loop.micro_batch_size, run.rollout.temperature
    budget = run.forward_budget
    old = None
    if not learn or needs_old_values(algo, updates):
        old = policy_values(model, rollouts, G, algo.share_prompt, temp, mb, **budget)
    ref_logp = None
    if algo.kl_coef:
        ref_logp = policy_values(run.ref_model, rollouts, G, algo.share_prompt, temp, mb, **budget).logp
    gen = torch.Generator().manual_seed(_step_seed(run.seed, step, 7))
    batch = build_batch(rollouts, adv, old, algo, G, gen, ref_logp)
    for f in feedback:  # refinement tokens, teacher targets
        batch = f.prepare(batch, got, mb, temp)
    t_score = time.perf_counter() - t1
    t2 = time.perf_counter()
    if learn:
        result = update(run.trainable, batch, algo, temp, run.loop.ppo_epochs, run.n_mini, mb,
                        run.rollout.max_new_tokens, run.rt.dp_size, **budget)
    else:  # no group carries a signal anywhere: an Adam step on zero gradients would still move the weights
        result = UpdateResult({"loss": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "kl_to_old": 0.0,
                               "grad_norm": 0.0, "update_applied": 0.0, "optimizer_steps": 0.0}, None)
    for f in feedback:
        f.after_update()
    t_update = time.perf_counter() - t2
    values = old if old is not None else result.old
    metrics = {**got.stats, **result.stats, **step_metrics(batch, values, got.rewards),
               "rollout_s": t_rollout, "score_s": t_score, "update_s": t_update, "lr": run.trainable.lr}
    metrics["tokens_per_s"] = dp_sum(float(rollouts.response_mask.sum())) / (time.perf_counter() - t0)
    # the step's compute in tokens (every pass re-reads prompt + response): the x axis of the scaling fit
    metrics["rollout_tokens"] = dp_sum(float((rollouts.prompt_lens + rollouts.response_lens).sum()))
    metrics.update(entropy_analysis(run, rollouts, batch.mask, planning, values, step))
    metrics["semantic_entropy"] = shannon_entropy(dp_sum(*gram_counts(got.texts, run.grams), 0.0)[:-1])
    metrics.update(answer_metrics(run, got))
    for f in feedback:
        metrics.update(f.metrics(batch, values, got))
    if run.analysis.diversity_every and step % run.analysis.diversity_every == 0:
        metrics.update(diversity_metrics(run, got))
    if ref_logp is not None:
        metrics["kl_to_ref"] = dp_mean_of(kl_k3(values.logp, ref_logp, batch.mask)[batch.mask])
    metrics.update(resource_metrics(run, rollouts, t_update if learn else 0.0))
    if run.validator is not None and run.loop.eval_every and (step + 1) % run.loop.eval_every == 0:
        metrics.update(run.validator(run.trainable.model.module))
    sample_every = run.logging.sample_every if run.logging is not None else 0
    if sample_every and (step + 1) % sample_every == 0:
        metrics["samples"] = sample_rows(run, got, step + 1)
    return metrics, got.cursor


def answer_metrics(run: RLSetup, got: Collected) -> dict:
    """How much of the ground truth a correct answer covers (next-token tasks: target tokens; 1 = only the next
    token), over the kept rollouts of the whole batch."""
    G = run.rollout.group_size
    lengths = [run.task.answer_length(got.items[i // G], answer) for i, answer in enumerate(got.answers)]
    covered = torch.tensor([n for n in lengths if n is not None], dtype=torch.float32)
    value = dp_mean_of(covered, empty=None)  # the same on every rank
    return {} if value is None else {"answer_target_tokens": value}


def diversity_metrics(run: RLSetup, got: Collected) -> dict:
    """Group diversity (``rpt.analysis.diversity``) averaged over the kept groups of the whole batch."""
    G = run.rollout.group_size
    groups = [group_diversity(got.texts[g:g + G], got.answers[g:g + G],
                              run.analysis.trajectory_threshold) for g in range(0, len(got.texts), G)]
    keys = ("distinct_answers", "distinct_ngram_share", "pairwise_similarity", "distinct_trajectories")
    sums = dp_sum(*[sum(d[k] for d in groups) for k in keys], float(len(groups)))
    return {k: (sums[i] / sums[-1] if sums[-1] else None) for i, k in enumerate(keys)}


def resource_metrics(run: RLSetup, rollouts: Rollouts, update_s: float) -> dict:
    """Peak memory of the step (the largest rank; CUDA allocator on GPU, process RSS high-water mark on CPU) and,
    on GPU, the update's model FLOP utilisation (6·params·tokens per epoch, an estimate that ignores attention)."""
    if run.rt.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    out = {"peak_memory_gb": dp_max(peak)}
    if run.rt.device.type == "cuda" and update_s > 0:
        tensor_parallel = run.rt.world_size // run.rt.dp_size  # each rank holds 1/TP of the weights
        params = sum(p.numel() for p in run.trainable.model.module.parameters()) * tensor_parallel
        tokens = dp_sum(float((rollouts.prompt_lens + rollouts.response_lens).sum())) * run.loop.ppo_epochs
        out["mfu_update"] = 6 * params * tokens / update_s / (run.logging.peak_flops * run.rt.world_size)
    return out


def sample_rows(run: RLSetup, got: Collected, step: int) -> list[dict]:
    """Up to ``logging.samples`` of this rank's kept rollouts, half the best and half the worst by reward (rank 0's
    are the ones logged)."""
    k = run.logging.samples
    order = sorted(range(len(got.texts)), key=lambda i: (-float(got.rewards[i]), i))
    chosen = sorted(set(order[:(k + 1) // 2] + order[len(order) - k // 2:])) if order else []
    G, tok = run.rollout.group_size, run.task.tokenizer
    rows = []
    for i in chosen:
        item = got.items[i // G]
        prompt = tok.decode(run.task.prompt_ids(item))
        rows.append({"step": step, "context": prompt[-300:], "response": got.texts[i],
                     "answer": got.answers[i], "reference": run.task.reference(item),
                     "reward": float(got.rewards[i]), "truncated": bool(got.rollouts.truncated[i])})
    return rows


def step_metrics(batch, values: PolicyValues, rewards: torch.Tensor) -> dict:
    """Whole-batch (data-parallel) statistics of the policy on the step's rollouts."""
    mask = batch.mask
    cov = token_covariance(values.logp, batch.adv.expand_as(values.logp), mask)
    forking = forking_mask(values.entropy, mask, 0.2)
    trained, total = dp_sum(float(batch.train_mask.sum()), float(mask.sum()))
    sample_logp = batch.rollouts.sample_logprobs[:, 1:]
    return {
        "reward_trained_mean": dp_mean_of(rewards),
        "entropy": dp_mean_of(values.entropy[mask]),
        "entropy_forking": dp_mean_of(values.entropy[forking]),
        "entropy_trained": dp_mean_of(values.entropy[batch.train_mask]),
        "trained_token_share": trained / max(total, 1.0),
        "cov_mean": dp_mean_of(cov[mask]),
        "cov_max": dp_max(float(cov[mask].max()) if mask.any() else float("-inf")),
        "response_length": dp_mean_of(batch.rollouts.response_lens),
        "train_rollout_gap": dp_mean_of((values.logp - sample_logp).abs()[mask]),
    }


def entropy_analysis(run: RLSetup, rollouts: Rollouts, mask: torch.Tensor, planning: torch.Tensor,
                     values: PolicyValues, step: int) -> dict:
    """Planning vs execution entropy, forking-token share and the top-rho overlap with the initial model."""
    ac = run.analysis
    planning = planning & mask
    execution = mask & ~planning
    planned, total = dp_sum(float(planning.sum()), float(mask.sum()))
    out = {
        "entropy_planning": dp_mean_of(values.entropy[planning], empty=None),
        "entropy_execution": dp_mean_of(values.entropy[execution], empty=None),
        "planning_token_share": planned / max(total, 1.0),
        "forking_token_share": dp_mean_of((values.entropy[mask] > ac.forking_threshold).float()),
    }
    if run.init_model is not None and ac.overlap_every and step % ac.overlap_every == 0:
        init = policy_values(run.init_model, rollouts, run.rollout.group_size, run.algo.share_prompt,
                             run.rollout.temperature, run.loop.micro_batch_size, **run.forward_budget)
        now, then = forking_mask(values.entropy, mask, ac.overlap_rho), forking_mask(init.entropy, mask, ac.overlap_rho)
        both, chosen = dp_sum(float((now & then).sum()), float(now.sum()))
        out["forking_overlap_with_init"] = both / max(chosen, 1.0)
    return out


def train(ctx, task, stage_name: str, init_source: str, loop_cfg: TrainLoopConfig, validator=None) -> dict:
    """Run (or resume) an RL stage from ``init_source``'s checkpoint; checkpoints go to ``checkpoints/<stage_name>``.
    ``validator`` (a ``rpt.eval.validation.Validator``) scores held-out items every ``loop_cfg.eval_every`` steps."""
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    check_layout(loop_cfg, rt.dp_size, stage_name)
    vocab = model_vocab(cfg.model, task.tokenizer.vocab_size)
    trainable = build_trainable(cfg.model, vocab, rt, loop_cfg, loop_cfg.steps)
    ref_model: Any | None = load_eval_model(cfg.model, rt, rd, init_source, vocab) if cfg.algo.kl_coef else None
    init_model = ref_model
    if init_model is None and cfg.analysis.overlap_every:
        init_model = load_eval_model(cfg.model, rt, rd, init_source, vocab)
    teacher_init = None  # SDPO's EMA / mixed teacher starts from the stage's initial weights
    if cfg.algo.sdpo.enabled and cfg.algo.sdpo.teacher != "current":
        teacher_init = load_eval_model(cfg.model, rt, rd, init_source, vocab)
    run = make_setup(cfg, rt, trainable, task, loop_cfg, ref_model, init_model, validator, teacher_init)
    if cfg.analysis.mine_grams:  # from the initial policy, also when resuming
        initial = init_model or load_eval_model(cfg.model, rt, rd, init_source, vocab)
        run.grams = mine_grams(run, initial, cfg.analysis.mine_prompts)
        log.info("%s: %d strategic grams mined from the initial policy's successful rollouts: %s", stage_name,
                 len(run.grams), run.grams[:20])

    watch = NoAnswerWatch(stage_name, cfg.rollout, loop_cfg.steps)

    def step_fn(step: int, state: dict) -> tuple[dict, dict]:
        metrics, cursor = rl_step(run, step, state["cursor"])
        watch.observe(metrics["no_answer_share"])
        return metrics, {"cursor": cursor}

    spec = LoopSpec(stage_name, loop_cfg.steps, loop_cfg.checkpoint_every, checkpoint_dir(rd, init_source),
                    postfix=("reward_mean", "entropy"), state={"cursor": 0})
    history = run_loop(ctx, spec, trainable, step_fn)
    tail = history[-max(1, len(history) // 4):] if history else []
    return {"steps": loop_cfg.steps, "checkpoint": str(latest_step_dir(rd.checkpoints(stage_name))),
            "reward_last_quarter": sum(m.get("reward_mean", 0.0) for m in tail) / max(1, len(tail)), **watch.summary()}


def mine_grams(run: RLSetup, model, prompts: int) -> list[str]:
    """Strategic grams mined (``rpt.analysis.planning.mine_strategic_grams``) from the successful rollouts of
    ``model`` (the stage's initial policy) on ``prompts`` training prompts spread over the ranks; a pure function
    of (weights, seed), so a resumed stage mines the same list. ``analysis.strategic_grams`` when none succeeded."""
    rt, G, task = run.rt, run.rollout.group_size, run.task
    items = task.items_for_step(0, max(prompts, rt.dp_size), run.seed + 1)[rt.dp_rank::rt.dp_size]
    ro = generate(model, [task.prompt_ids(it) for it in items for _ in range(G)], run.sampling,
                  _step_seed(run.seed, -1, rt.dp_rank), rt.device)
    texts = [task.tokenizer.decode(ro.response_ids(i)) for i in range(len(ro))]
    good = [t for i, t in enumerate(texts) if task.is_correct(task.reward(items[i // G], t))]
    solutions = [t for part in gather_objects(good) for t in part]
    return mine_strategic_grams(solutions) or list(run.analysis.strategic_grams)


def make_setup(cfg: RootConfig, rt, trainable, task, loop_cfg: TrainLoopConfig, ref_model=None,
               init_model=None, validator=None, teacher_init=None) -> RLSetup:
    """The ``RLSetup`` of a ``RootConfig`` (its rollout, algo, analysis and logging sections) for one RL loop;
    ``teacher_init``: the initial weights of SDPO's EMA / mixed teacher (None: a copy of the trainable's)."""
    sampling, algo, G = SamplingParams.from_rollout(cfg.rollout, task.tokenizer), cfg.algo, cfg.rollout.group_size
    refiner = Refiner(algo.critique, task, sampling, G) if algo.critique.enabled else None
    distill = None
    if algo.sdpo.enabled:
        distill = SelfDistiller(algo.sdpo, task, trainable, G, teacher_init, cfg.model, rt.dtype, algo.share_prompt)
    return RLSetup(trainable, task, cfg.rollout, algo, loop_cfg, cfg.analysis, sampling, rt, cfg.run.seed, ref_model,
                   init_model, cfg.logging, validator, refiner=refiner, self_distill=distill)


def check_layout(loop_cfg: TrainLoopConfig, dp_size: int, section: str) -> None:
    """Prompts must split evenly over the data-parallel ranks and the mini-batches."""
    if loop_cfg.prompts_per_step % dp_size:
        raise ValueError(f"{section}: prompts_per_step={loop_cfg.prompts_per_step} does not split over "
                         f"{dp_size} data-parallel ranks")
    mini = loop_cfg.ppo_mini_batch_size or loop_cfg.prompts_per_step
    if (mini // dp_size) * dp_size != mini:
        raise ValueError(f"{section}: ppo_mini_batch_size={mini} does not split over {dp_size} data-parallel ranks")
