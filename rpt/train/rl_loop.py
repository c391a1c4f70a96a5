"""The RL loop shared by the `rpt` and `rl` stages: rollout → reward → GRPO advantages → update, every step.

Each step: this rank's share of the step's prompts is sampled G times; rewards come from the task's verifier;
with dynamic sampling, groups whose rewards are all equal are dropped and more prompts are rolled out (up to
``algo.max_refills`` extra batches); the policy is updated once per PPO epoch. Everything a step draws (prompts,
sampling noise, Clip-Cov choices) is derived from (seed, step), so a run resumed from a checkpoint reproduces the
uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import time

import torch

from rpt.algo.advantages import all_equal_groups, group_advantages
from rpt.model.loading import checkpoint_dir, load_eval_model
from rpt.rollout.engine import generate
from rpt.rollout.stopping import answer_stop
from rpt.train import checkpoint, preemption
from rpt.train.optim import build_trainable
from rpt.algo.masks import forking_mask
from rpt.analysis.planning import planning_token_mask
from rpt.train.rl_batch import build_batch, can_reuse_update_forward, concat_rollouts, forking_share, policy_stats
from rpt.runtime import dp_sum
from rpt.train.rl_update import update

log = logging.getLogger(__name__)


def _step_seed(seed: int, step: int, *more: int) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(
        hash((seed, step, *more)) & 0xFFFFFFFFFFFF)).item())


def collect(ctx, model, task, tok, step: int, loop_cfg) -> tuple:
    """Roll out this rank's prompts (with dynamic-sampling refills); returns rollouts, rewards and counts."""
    cfg, rt = ctx.cfg, ctx.rt
    G, algo = cfg.rollout.group_size, cfg.algo
    per_rank = max(1, loop_cfg.prompts_per_step // rt.dp_size)
    kept_parts, kept_rewards, all_rewards, all_equal, groups_seen, refills = [], [], [], 0, 0, 0
    while True:
        items = task.items_for_step(step * (algo.max_refills + 1) + refills, per_rank * rt.dp_size,
                                    cfg.run.seed)[rt.dp_rank::rt.dp_size]
        prompts = [ids for it in items for ids in [task.prompt_ids(it)] * G]
        ro = generate(model, prompts, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                      tok.eos_id, tok.pad_id, _step_seed(cfg.run.seed, step, refills, rt.dp_rank), rt.device,
                      stop=answer_stop(cfg.rollout, tok), engine=cfg.rollout.engine)
        rewards = torch.tensor([task.reward(items[i // G], tok.decode(ro.response_ids(i))) for i in range(len(prompts))])
        all_rewards.append(rewards)
        equal = all_equal_groups(rewards, G, algo.dynamic_sampling_tol)
        all_equal += int(equal.sum())
        groups_seen += len(items)
        keep = ~equal if algo.dynamic_sampling else torch.ones_like(equal)
        if keep.any():
            seq_keep = keep.repeat_interleave(G)
            kept_parts.append(type(ro)(ro.tokens[seq_keep], ro.prompt_lens[seq_keep], ro.response_mask[seq_keep],
                                       ro.sample_logprobs[seq_keep]))
            kept_rewards.append(rewards[seq_keep])
        n_kept = sum(len(r) for r in kept_rewards) // G
        if not algo.dynamic_sampling or n_kept >= per_rank or refills >= algo.max_refills:
            break
        refills += 1
    sampled = torch.cat(all_rewards)
    stats = {"all_equal_share": dp_sum(all_equal) / max(dp_sum(groups_seen), 1), "refills": refills,
             "reward_mean": _dp_mean(sampled), "accuracy": _dp_mean((sampled > 0.5).float())}
    if not kept_parts:
        return None, None, stats
    rollouts = concat_rollouts(kept_parts, tok.pad_id)
    rewards = torch.cat(kept_rewards)
    if algo.dynamic_sampling and len(rewards) > per_rank * G:
        rollouts = type(rollouts)(*(x[:per_rank * G] for x in (rollouts.tokens, rollouts.prompt_lens,
                                                                rollouts.response_mask, rollouts.sample_logprobs)))
        rewards = rewards[:per_rank * G]
    return rollouts, rewards, stats


def _dp_mean(values: torch.Tensor) -> float:
    """Mean over the whole data-parallel batch (every rank's share), as one process would have logged it."""
    return dp_sum(float(values.float().sum())) / max(dp_sum(float(values.numel())), 1.0)


def _global_max(x: torch.Tensor) -> float:
    import torch.distributed as dist

    value = torch.tensor([float(x.max()) if x.numel() else 0.0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def entropy_analysis(cfg, batch, rollouts, tok, step: int, init_model=None) -> dict:
    """Planning vs execution entropy, forking-token share and the top-rho overlap with the initial model."""
    ac = cfg.analysis
    mask = batch.mask
    planning = planning_token_mask(rollouts.tokens, rollouts.response_mask, tok, ac.strategic_grams)[:, 1:] & mask
    execution = mask & ~planning
    out = {
        "entropy_planning": float(batch.entropy[planning].mean()) if planning.any() else None,
        "entropy_execution": float(batch.entropy[execution].mean()) if execution.any() else None,
        "planning_token_share": float(planning.sum()) / max(float(mask.sum()), 1.0),
        "forking_token_share": float((batch.entropy[mask] > ac.forking_threshold).float().mean()) if mask.any() else 0.0,
    }
    if init_model is not None and ac.overlap_every and step % ac.overlap_every == 0 and mask.any():
        _, init_entropy = policy_stats(init_model, batch, cfg.rollout.temperature, cfg.rpt.micro_batch_size)
        now, then = forking_mask(batch.entropy, mask, ac.overlap_rho), forking_mask(init_entropy, mask, ac.overlap_rho)
        out["forking_overlap_with_init"] = float((now & then).sum()) / max(float(now.sum()), 1.0)
    return out


def rl_step(ctx, trainable, task, tok, step: int, loop_cfg, ref_model=None, init_model=None) -> dict:
    cfg, rt = ctx.cfg, ctx.rt
    t0 = time.perf_counter()
    rollouts, rewards, sample_stats = collect(ctx, trainable.model.module, task, tok, step, loop_cfg)
    t_rollout = time.perf_counter() - t0
    metrics = dict(sample_stats)
    if rollouts is None:  # every group all-equal and refills exhausted: nothing to learn from this step
        metrics.update(update_applied=0.0, rollout_s=t_rollout)
        return metrics
    t1 = time.perf_counter()
    adv = group_advantages(rewards, cfg.rollout.group_size, cfg.algo.norm_adv_by_std, cfg.algo.adv_eps)
    gen = torch.Generator().manual_seed(_step_seed(cfg.run.seed, step, 7))
    learn = _global_max(adv.abs()) > 0.0 or bool(cfg.algo.entropy_coef) or bool(cfg.algo.kl_coef)
    batch = build_batch(trainable.model, rollouts, adv.to(rt.device), cfg.algo, cfg.rollout,
                        loop_cfg.micro_batch_size, gen, ref_model,
                        old_from_update=learn and can_reuse_update_forward(cfg.algo, loop_cfg.ppo_epochs))
    t_score = time.perf_counter() - t1
    t2 = time.perf_counter()
    if learn:
        upd = update(trainable, batch, cfg.algo, cfg.rollout.temperature, loop_cfg.ppo_epochs,
                     loop_cfg.micro_batch_size, rt.dp_size)
    else:
        # no group carries a learning signal: an Adam step on zero gradients would still move the weights
        upd = {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "kl_to_old": 0.0, "loss": 0.0, "grad_norm": 0.0,
               "update_applied": 0.0}
    t_update = time.perf_counter() - t2
    mask = batch.mask
    n_resp = float(mask.sum())
    response_tokens = dp_sum(float(rollouts.response_mask.sum()))
    metrics.update(upd)
    metrics.update(  # data-parallel means; forking share, cov_max and the entropy analysis are rank 0's share
        reward_trained_mean=_dp_mean(rewards),
        entropy=_dp_mean(batch.entropy[mask]),
        entropy_forking=forking_share(batch.entropy, mask),
        entropy_trained=_dp_mean(batch.entropy[batch.train_mask]),
        trained_token_share=dp_sum(float(batch.train_mask.sum())) / max(dp_sum(n_resp), 1.0),
        cov_mean=_dp_mean(batch.cov[mask]),
        cov_max=float(batch.cov[mask].max()) if n_resp else 0.0,
        response_length=_dp_mean(rollouts.response_lens),
        train_rollout_gap=_dp_mean((batch.old_logp - batch.sample_logp).abs()[mask]),
        rollout_s=t_rollout, score_s=t_score, update_s=t_update, lr=trainable.lr,
        tokens_per_s=response_tokens / (time.perf_counter() - t0))
    metrics.update(entropy_analysis(cfg, batch, rollouts, tok, step, init_model))
    return metrics


def train(ctx, task, stage_name: str, init_source: str, loop_cfg) -> dict:
    """Run (or resume) an RL stage from ``init_source``'s checkpoint; checkpoints go to ``checkpoints/<stage_name>``."""
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    tok = task.tokenizer
    vocab = cfg.model.vocab_size or tok.vocab_size
    trainable = build_trainable(cfg.model, vocab, rt, loop_cfg, loop_cfg.steps)
    ckpt_dir = rd.checkpoints(stage_name)
    start, wandb_id = checkpoint.resume_or_init(ckpt_dir, trainable, checkpoint_dir(rd, init_source))
    ref_model = load_eval_model(cfg, rt, rd, init_source, vocab) if cfg.algo.kl_coef > 0 else None
    init_model = ref_model
    if init_model is None and cfg.analysis.overlap_every:
        init_model = load_eval_model(cfg, rt, rd, init_source, vocab)
    metrics_log = ctx.metrics(wandb_id=wandb_id, resume_step=start + 1, stage=stage_name)
    trainable.model.train()
    history = []
    bar = ctx.progress(range(start, loop_cfg.steps), desc=stage_name, initial=start, total=loop_cfg.steps)
    for step in bar:
        m = rl_step(ctx, trainable, task, tok, step, loop_cfg, ref_model, init_model)
        metrics_log.log(step + 1, m)
        history.append(m)
        bar.set_postfix(reward=f"{m.get('reward_mean', 0):.3f}", H=f"{m.get('entropy', 0):.2f}")
        preemption.end_of_step(stage_name, step + 1, loop_cfg.steps, loop_cfg.checkpoint_every, ckpt_dir, trainable,
                               metrics_log)
    metrics_log.close()
    tail = history[-max(1, len(history) // 4):] if history else []
    return {"steps": loop_cfg.steps, "checkpoint": str(checkpoint.latest_step_dir(ckpt_dir)),
            "reward_last_quarter": sum(m.get("reward_mean", 0.0) for m in tail) / max(1, len(tail))}
