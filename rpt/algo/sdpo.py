"""SDPO's divergence (arXiv 2601.20802) as pure tensor functions: top-K logits plus a tail bucket.

The loss at response token t is D(π_θ(·|x, y<t) ‖ π_T(·|x, f, y<t)), the teacher π_T being the policy conditioned
on feedback f (``rpt.train.self_distill``). Over the full vocabulary that needs both distributions at every token;
as the paper's code does, we keep only K ids per token and lump the rest of each distribution into one tail
bucket, i.e. the divergence between the two distributions coarsened to the partition {id_1, …, id_K, rest}. That
is a lower bound of the full divergence (coarsening never increases an f-divergence) and equals it when K covers
the vocabulary. Our choice of the K ids: the teacher's top K (fixed before the update, computed once per batch);
D is KL or Jensen–Shannon (``algo.sdpo.divergence``; the paper uses JS for stability).
"""

from __future__ import annotations

import math

import torch

DIVERGENCES = ("kl", "js")


def with_tail(top_logp: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` log-probs of K ids → ``[..., K+1]`` log-probs of the partition {those ids, the rest}."""
    mass = torch.logsumexp(top_logp, dim=-1, keepdim=True).clamp(max=0.0)
    tail = torch.log((-torch.expm1(mass)).clamp(min=0.0) + 1e-12)  # log(1 - Σ p_k), floored where K covers all
    return torch.cat([top_logp, tail], dim=-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    return (logp.exp() * (logp - logq)).sum(-1)


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """D(student ‖ teacher) over the last axis (log-probs of one partition, summing to 1): KL, or Jensen–Shannon
    (½ KL(s‖m) + ½ KL(t‖m), m = ½ (s + t))."""
    if kind == "kl":
        return _kl(student_logp, teacher_logp)
    if kind == "js":
        mix = torch.logsumexp(torch.stack([student_logp, teacher_logp]), dim=0) - math.log(2.0)
        return 0.5 * _kl(student_logp, mix) + 0.5 * _kl(teacher_logp, mix)
    raise ValueError(f"algo.sdpo.divergence must be one of {DIVERGENCES}, got {kind!r}")


def topk_tail_divergence(student_top: torch.Tensor, teacher_top: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token D between the student's and the teacher's log-probs at the same K ids (``[..., K]`` each, both
    normalised over the full vocabulary), each with its tail bucket."""
    return divergence(with_tail(student_top), with_tail(teacher_top), kind)


def full_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
                    k: int | None = None) -> torch.Tensor:
    """Reference computation over the whole vocabulary (tests): with ``k``, the partition {teacher's top k, rest}
    built from the full distributions."""
    s, t = torch.log_softmax(student_logits, -1), torch.log_softmax(teacher_logits, -1)
    if k is None:
        return divergence(s, t, kind)
    top = torch.zeros_like(t, dtype=torch.bool).scatter(-1, t.topk(k, -1).indices, True)

    def coarse(logp):
        rest = torch.logsumexp(logp.masked_fill(top, float("-inf")), -1, keepdim=True).clamp(min=math.log(1e-12))
        return torch.cat([logp[top].view(*logp.shape[:-1], k), rest], -1)

    return divergence(coarse(s), coarse(t), kind)
