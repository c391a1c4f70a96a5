"""Forward helpers shared by every stage: position ids, per-token log-probs, entropies and top-k entropy.

Logits are gathered across tensor-parallel ranks (``runtime_gather_output=True``) before the softmax, so the
statistics are layout-independent; the pretraining loss instead uses megatron's vocab-parallel cross entropy.
All reductions run in float32 whatever the model dtype.
"""

from __future__ import annotations

import torch


def position_ids(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """``[b, s, V]`` float32 logits of a causal forward over ``tokens``."""
    return model(tokens, position_ids(tokens), None, runtime_gather_output=True).float()


def last_token_logits(model, contexts: list[list[int]], device) -> torch.Tensor:
    """``[b, V]`` float32 logits after the last token of each context (right-padded into one batch; causal
    attention means the padding never affects the positions read)."""
    longest = max(len(c) for c in contexts)
    tokens = torch.zeros(len(contexts), longest, dtype=torch.long)
    for i, context in enumerate(contexts):
        tokens[i, :len(context)] = torch.tensor(context)
    logits = full_logits(model, tokens.to(device))
    last = torch.tensor([len(c) - 1 for c in contexts], device=device)
    return logits[torch.arange(len(contexts), device=device), last]


def lm_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of ``tokens[:, 1:]`` given ``tokens[:, :-1]`` (vocab-parallel)."""
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    per_token = model(inputs, position_ids(inputs), None, labels=labels)
    return per_token.float().mean()


def logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` and the full-distribution entropy at each position (both ``[b, s]``)."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy (nats) of the top-``k`` next-token distribution, renormalised over those ``k`` tokens."""
    top = torch.topk(logits.float(), k=min(k, logits.shape[-1]), dim=-1).values
    logp = torch.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1)
