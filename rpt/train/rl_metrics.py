"""The metrics of an RL step, each a function of what the step produced (rollouts, policy values, rewards):
whole-batch policy statistics, planning vs execution entropy, the forking-token overlap with the initial model,
group diversity, answer coverage, peak memory and MFU, and the sample rows logged for reading.

Every value is reduced over the data-parallel group (the same on every rank), and every rank takes the same
collectives whatever its data.
"""

from __future__ import annotations

import torch

from rpt.algo.losses import kl_k3
from rpt.algo.token_choice import forking_mask, token_covariance
from rpt.analysis.diversity import group_diversity
from rpt.analysis.planning import gram_counts, shannon_entropy
from rpt.distributed import dp_max, dp_mean_of, dp_sum
from rpt.peak_memory import peak_memory_bytes
from rpt.rollout.engine import Rollouts
from rpt.train.rl_update import PolicyValues, policy_values


def policy_metrics(batch, values: PolicyValues, rewards: torch.Tensor) -> dict:
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
        **sampler_agreement(values.logp, sample_logp, mask),
    }


def sampler_agreement(trainer_logp: torch.Tensor, sample_logp: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the rollout engine's log-probs of the sampled tokens are from the trainer's: the mean absolute gap
    (``train_rollout_gap``) and NeMo-RL's ``token_mult_prob_error``, the mean over response tokens of
    exp(|log p_trainer − log p_sampler|) (1 when they agree; its tests require < 1.05), with its largest token."""
    gap = (trainer_logp - sample_logp).abs()[mask]
    return {"train_rollout_gap": dp_mean_of(gap), "token_mult_prob_error": dp_mean_of(gap.exp(), empty=1.0),
            "token_mult_prob_error_max": dp_max(float(gap.max().exp()) if gap.numel() else 1.0)}


def kl_to_reference(values: PolicyValues, ref_logp: torch.Tensor, mask: torch.Tensor) -> dict:
    """The k3 estimate of KL(policy ‖ reference) over the batch's response tokens."""
    return {"kl_to_ref": dp_mean_of(kl_k3(values.logp, ref_logp, mask)[mask])}


def planning_metrics(run, mask: torch.Tensor, planning: torch.Tensor, values: PolicyValues, texts: list[str]
                     ) -> dict:
    """Planning vs execution entropy, the forking-token share, and the semantic entropy of the strategic grams
    the responses use (HICRA's planning tokens, ``rpt.analysis.planning``)."""
    planning = planning & mask
    execution = mask & ~planning
    planned, total = dp_sum(float(planning.sum()), float(mask.sum()))
    return {
        "entropy_planning": dp_mean_of(values.entropy[planning], empty=None),
        "entropy_execution": dp_mean_of(values.entropy[execution], empty=None),
        "planning_token_share": planned / max(total, 1.0),
        "forking_token_share": dp_mean_of((values.entropy[mask] > run.analysis.forking_threshold).float()),
        "semantic_entropy": shannon_entropy(dp_sum(*gram_counts(texts, run.grams), 0.0)[:-1]),
    }


def overlap_with_init(run, rollouts: Rollouts, mask: torch.Tensor, values: PolicyValues) -> dict:
    """The share of today's top-rho entropy tokens that were also top-rho under the initial model (one extra
    forward of the initial model)."""
    rho = run.analysis.overlap_rho
    init = policy_values(run.init_model, rollouts, run.rollout.group_size, run.algo.share_prompt, run.forward)
    now, then = forking_mask(values.entropy, mask, rho), forking_mask(init.entropy, mask, rho)
    both, chosen = dp_sum(float((now & then).sum()), float(now.sum()))
    return {"forking_overlap_with_init": both / max(chosen, 1.0)}


def answer_metrics(run, collected) -> dict:
    """How much of the ground truth a correct answer covers (next-token tasks: target tokens; 1 = only the next
    token), over the kept rollouts of the whole batch."""
    G = run.rollout.group_size
    lengths = [run.task.answer_length(collected.items[i // G], answer) for i, answer in enumerate(collected.answers)]
    covered = torch.tensor([n for n in lengths if n is not None], dtype=torch.float32)
    value = dp_mean_of(covered, empty=None)  # the same on every rank
    return {} if value is None else {"answer_target_tokens": value}


def diversity_metrics(run, collected) -> dict:
    """Group diversity (``rpt.analysis.diversity``) averaged over the kept groups of the whole batch."""
    G = run.rollout.group_size
    groups = [group_diversity(collected.texts[g:g + G], collected.answers[g:g + G],
                              run.analysis.trajectory_threshold) for g in range(0, len(collected.texts), G)]
    keys = ("distinct_answers", "distinct_ngram_share", "pairwise_similarity", "distinct_trajectories")
    sums = dp_sum(*[sum(d[k] for d in groups) for k in keys], float(len(groups)))
    return {k: (sums[i] / sums[-1] if sums[-1] else None) for i, k in enumerate(keys)}


def resource_metrics(run, rollouts: Rollouts, update_s: float) -> dict:
    """Peak memory of the step (the largest rank; CUDA allocator on GPU, process RSS high-water mark on CPU) and,
    on GPU, the update's model FLOP utilisation (6·params·tokens per epoch, an estimate that ignores attention)."""
    peak = peak_memory_bytes(run.rt.device, reset=True) / 1e9
    out = {"peak_memory_gb": dp_max(peak)}
    if run.rt.device.type == "cuda" and update_s > 0:
        tensor_parallel = run.rt.world_size // run.rt.dp_size  # each rank holds 1/TP of the weights
        params = sum(p.numel() for p in run.trainable.model.module.parameters()) * tensor_parallel
        tokens = dp_sum(float((rollouts.prompt_lens + rollouts.response_lens).sum())) * run.loop.ppo_epochs
        out["mfu_update"] = 6 * params * tokens / update_s / (run.logging.peak_flops * run.rt.world_size)
    return out


PROMPT_CHARS = 600  # a dumped prompt's head and tail (its instruction, chat frame and the context's end)


def head_and_tail(text: str, chars: int) -> str:
    """``text`` whole when at most ``chars`` long, else its first and last ``chars // 2`` characters around a
    marker saying how many were left out."""
    if len(text) <= chars:
        return text
    half = chars // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"


def sample_rows(run, collected, step: int) -> list[dict]:
    """Up to ``logging.samples`` of this rank's kept rollouts, half the best and half the worst by reward (rank 0's
    are the ones logged)."""
    k = run.logging.samples
    order = sorted(range(len(collected.texts)), key=lambda i: (-float(collected.rewards[i]), i))
    chosen = sorted(set(order[:(k + 1) // 2] + order[len(order) - k // 2:])) if order else []
    G, tok = run.rollout.group_size, run.task.tokenizer
    rows = []
    for i in chosen:
        item = collected.items[i // G]
        prompt = tok.decode_shown(run.task.prompt_ids(item))  # as the model saw it: a chat template shows
        rows.append({"step": step, "context": head_and_tail(prompt, PROMPT_CHARS), "response": collected.texts[i],
                     "answer": collected.answers[i], "reference": run.task.reference(item),
                     "reward": float(collected.rewards[i]), "truncated": bool(collected.rollouts.truncated[i])})
    return rows
