"""Accuracy of a model on a task: predicting directly (one greedy next token) or reasoning first (greedy, and
the mean over k samples), scored by the task's own verifier."""

from __future__ import annotations

import torch

from rpt.model.forward import last_token_logits
from rpt.rollout.engine import SamplingParams, generate
from rpt.tasks.next_token import prefix_reward


@torch.inference_mode()
def direct_next_token(model, task, items, device, batch_size: int = 64) -> list[float]:
    """Greedy next token straight from the context (no reasoning), scored by the prefix reward."""
    scores = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        pred = last_token_logits(model, [it["context"] for it in chunk], device).argmax(-1).tolist()
        scores += [prefix_reward(task.tokenizer.token_bytes(p), task.target_bytes(it))
                   for p, it in zip(pred, chunk, strict=True)]
    return scores


def reasoning_first(model, task, items, samples: int, sampling: SamplingParams, seed: int, device,
                    batch_size: int = 256) -> list[float]:
    """Mean reward per item over ``samples`` completions sampled as ``sampling`` says (temperature 0 → one
    greedy completion)."""
    tok = task.tokenizer
    n = 1 if sampling.temperature <= 0 else samples
    prompts = [task.prompt_ids(it) for it in items for _ in range(n)]
    rewards = []
    for s in range(0, len(prompts), batch_size):
        ro = generate(model, prompts[s:s + batch_size], sampling, seed + s, device)
        rewards += [task.reward(items[(s + i) // n], tok.decode(ro.response_ids(i)))
                    for i in range(len(ro.prompt_lens))]
    return [sum(rewards[i * n:(i + 1) * n]) / n for i in range(len(items))]
