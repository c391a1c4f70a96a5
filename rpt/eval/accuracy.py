"""Accuracy of a model on a task: predicting directly (one greedy next token, over the whole vocabulary or the
corpus's tokens, and the true token's log-probability) or reasoning first (greedy, and the mean over k samples,
pass@k, and the diversity of the k samples), scored by the task's own verifier."""

from __future__ import annotations

import numpy as np
import torch

from rpt.analysis.diversity import group_diversity, pass_at_k
from rpt.model.forward import last_token_logits
from rpt.rollout.engine import SamplingParams, generate
from rpt.tasks.next_token import prefix_reward


@torch.inference_mode()
def direct_next_token(model, task, items, device, corpus_tokens: torch.Tensor | None = None,
                      batch_size: int = 64) -> dict[str, list[float]]:
    """Predicting without reasoning, from one forward per context: ``direct`` (greedy over the whole vocabulary,
    scored by the prefix reward), ``direct_corpus`` (greedy over ``corpus_tokens``, the tokens the corpus continues
    with: ``rpt.eval.corpus_tokens``; omitted when None) and ``logp`` (the teacher-forced log-probability of the
    true next token)."""
    out: dict[str, list[float]] = {"direct": [], "logp": []}
    if corpus_tokens is not None:
        out["direct_corpus"] = []
    score = lambda token, item: prefix_reward(task.tokenizer.token_bytes(token), task.target_bytes(item))  # noqa: E731
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        logits = last_token_logits(model, [it["context"] for it in chunk], device).float()
        targets = torch.tensor([it["target"][0] for it in chunk], device=logits.device)
        out["logp"] += torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].tolist()
        out["direct"] += [score(p, it) for p, it in zip(logits.argmax(-1).tolist(), chunk, strict=True)]
        if corpus_tokens is not None:
            picked = argmax_over(logits, corpus_tokens).tolist()
            out["direct_corpus"] += [score(p, it) for p, it in zip(picked, chunk, strict=True)]
    return out


def argmax_over(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per row, the allowed token with the highest logit (``allowed``: ``[vocab]`` bool; the rows of a padded
    vocabulary beyond it are never allowed)."""
    mask = torch.zeros(logits.shape[-1], dtype=torch.bool)
    mask[:len(allowed)] = allowed[:logits.shape[-1]]
    return logits.masked_fill(~mask.to(logits.device), float("-inf")).argmax(-1)


def sample_completions(model, task, items, samples: int, sampling: SamplingParams, seed: int, device,
                       batch_size: int = 256) -> tuple[list[list[float]], list[list[str]]]:
    """The reward and the text of each of ``samples`` completions per item, sampled as ``sampling`` says
    (temperature 0 → one greedy completion per item)."""
    tok = task.tokenizer
    n = 1 if sampling.temperature <= 0 else samples
    prompts = [task.prompt_ids(it) for it in items for _ in range(n)]
    rewards, texts = [], []
    for s in range(0, len(prompts), batch_size):
        ro = generate(model, prompts[s:s + batch_size], sampling, seed + s, device)
        for i in range(len(ro.prompt_lens)):
            texts.append(tok.decode(ro.response_ids(i)))
            rewards.append(task.reward(items[(s + i) // n], texts[-1]))
    per_item = [slice(i * n, (i + 1) * n) for i in range(len(items))]
    return [rewards[sl] for sl in per_item], [texts[sl] for sl in per_item]


def reasoning_first(model, task, items, samples: int, sampling: SamplingParams, seed: int, device,
                    batch_size: int = 256) -> list[float]:
    """Mean reward per item over ``samples`` completions (``sample_completions``)."""
    rewards, _ = sample_completions(model, task, items, samples, sampling, seed, device, batch_size)
    return [sum(r) / len(r) for r in rewards]


def mean_diversity(texts: list[list[str]], threshold: float, extract) -> dict[str, float]:
    """Group diversity (``rpt.analysis.diversity.group_diversity``) of each item's samples, averaged over items;
    ``extract`` reads a sample's answer (the task's ``extract``)."""
    groups = [group_diversity(t, [extract(x) for x in t], threshold) for t in texts]
    return {k: sum(g[k] for g in groups) / len(groups) for k in groups[0]} if groups else {}


def pass_at_ks(per_item: list[list[bool]]) -> dict[str, float]:
    """Unbiased pass@k for k = 1..n over items with n samples each, given whether each sample is correct."""
    n = len(per_item[0]) if per_item else 0
    return {f"pass@{k}": sum(pass_at_k(n, sum(correct), k) for correct in per_item) / len(per_item)
            for k in range(1, n + 1)}


BUCKETS = ("easy", "medium", "hard")


def by_bucket(items, scores, thresholds) -> dict:
    """Mean score and count per nested difficulty bucket (a position is in a bucket when its entropy exceeds the
    bucket's threshold)."""
    out = {}
    for name, thr in zip(BUCKETS, thresholds, strict=True):
        chosen = [s for it, s in zip(items, scores, strict=True) if it["entropy"] > thr]
        out[name] = {"accuracy": float(np.mean(chosen)) if chosen else None, "n": len(chosen)}
    return out
