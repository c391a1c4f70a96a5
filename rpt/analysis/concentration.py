"""Where RL's effect lands: the per-token change of the policy over an RL stage, and the share of it that falls on
the high-entropy minority of tokens and on planning vs execution tokens.

The finding this measures (arXiv 2506.01939; HICRA, arXiv 2509.03646) is that RL's learning signal concentrates
on the ~20% of response tokens where the policy is most uncertain (the "forking" tokens). Here it is measured on
the outcome, the policy's change itself, rather than on a gradient or an entropy statistic during training.

Definitions (what ``eval/concentration.json`` holds):

- π_before is the stage's initial checkpoint (``rpt``: ``rpt.init_from``; ``rl_<source>``: ``<source>``),
  π_after its latest checkpoint.
- Rollouts: π_before samples G = ``rollout.group_size`` responses to each of a fixed sample of
  ``eval.concentration_prompts`` held-out prompts (``rpt``: held-out positions; ``rl_<source>``: the downstream
  test questions), drawn with the run seed, with the rollout's own sampling (temperature τ, top-p, stop rule)
  capped at ``eval.max_new_tokens``. Both policies are then scored on the same token sequences, so the change is
  measured where the starting policy actually goes.
- Per response token t (token ``tokens[:, t+1]`` predicted from ``tokens[:, :t+1]``; mask
  ``response_mask[:, 1:]``), with p_before and p_after the full next-token distributions softmax(logits / τ):
  change_t = KL(p_after ‖ p_before) = Σ_v p_after(v) · (log p_after(v) − log p_before(v))  (nats, ≥ 0);
  also dlogp_t = |log p_after(y_t) − log p_before(y_t)| of the sampled token y_t;
  H_t = −Σ_v p_before(v) log p_before(v), the *initial* policy's entropy (nats).
- Concentration: the N response tokens sorted by H_t, highest first (ties keep their row-major order). The curve is
  the cumulative share of Σ change against the share of tokens taken, from (0, 0) to (1, 1): a Lorenz-style
  concentration curve, ranked by initial entropy rather than by the change itself, so it lies above the
  diagonal when the change sits on high-entropy tokens and below it when it sits on low-entropy ones.
  top share = (Σ change over the first ⌈top·N⌉ tokens) / Σ change. A spread that ignores entropy gives about
  ``top`` (20% at 20%); the finding predicts much more.
- Planning split: planning tokens are those inside a strategic gram (``analysis.strategic_grams``, see
  ``rpt.analysis.planning``); planning token share = their share of the N tokens, planning change share = their
  share of Σ change. A change share above the token share means the change favours planning tokens.
- With Σ change = 0 (identical policies) the shares are undefined: they are None and the curve is empty.

The pure functions (``token_change``, ``concentration``) take tensors and return numbers; ``measure_models`` rolls
out and scores two models in memory; ``measure_concentration`` loads them from a run's checkpoints.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from rpt.analysis.planning import planning_token_mask
from rpt.model.forward import full_logits
from rpt.model.loading import load_eval_model
from rpt.rollout.engine import SamplingParams, generate

log = logging.getLogger(__name__)

CURVE_POINTS = 50  # segments of the stored curve (51 points, (0, 0) and (1, 1) included)
LOGIT_BUDGET = 2 ** 25  # rows × positions × vocab of one scoring forward (bounds the full-logits memory)


@dataclass(frozen=True)
class TokenChange:
    """Per-token values, each shaped like the mask and 0 outside it."""

    kl: torch.Tensor  # KL(p_after ‖ p_before), nats
    abs_dlogp: torch.Tensor  # |log p_after(y) − log p_before(y)| of the target token y
    entropy: torch.Tensor  # entropy of p_before, nats


def token_change(logits_after: torch.Tensor, logits_before: torch.Tensor, targets: torch.Tensor,
                 mask: torch.Tensor) -> TokenChange:
    """Change of the next-token distribution at every position: ``logits_*`` are ``[..., V]`` at the sampling
    temperature already (divided by τ), ``targets`` and ``mask`` ``[...]``. Computed in float32."""
    lp_a = torch.log_softmax(logits_after.float(), dim=-1)
    lp_b = torch.log_softmax(logits_before.float(), dim=-1)
    p_a, p_b = lp_a.exp(), lp_b.exp()
    # 0 · log 0 = 0: a token with no mass under p_after adds nothing, whatever p_before says of it
    kl = torch.where(p_a > 0, p_a * (lp_a - lp_b), torch.zeros_like(p_a)).sum(-1).clamp_min(0.0)
    idx = targets.unsqueeze(-1)
    dlogp = (lp_a.gather(-1, idx) - lp_b.gather(-1, idx)).squeeze(-1).abs()
    entropy = -torch.where(p_b > 0, p_b * lp_b, torch.zeros_like(p_b)).sum(-1)
    zero = torch.zeros_like(kl)
    return TokenChange(torch.where(mask, kl, zero), torch.where(mask, dlogp, zero), torch.where(mask, entropy, zero))


def top_count(n: int, top: float) -> int:
    """⌈top·n⌉, immune to float noise (0.28 · 25 is 7.000000000000001 in floating point, and must give 7)."""
    return min(n, math.ceil(round(top * n, 9)))


def concentration(change: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, top: float = 0.2,
                  planning: torch.Tensor | None = None, points: int = CURVE_POINTS) -> dict:
    """How much of Σ ``change`` (≥ 0 per token) the highest-``entropy`` tokens carry, over the tokens in ``mask``.

    Returns ``tokens`` (N), ``top``, ``top_tokens`` (⌈top·N⌉), ``total_change``, ``mean_change``, ``top_share``,
    ``curve`` ([token share, change share] pairs, highest entropy first, from [0, 0] to [1, 1], about ``points``
    segments) and, with a ``planning`` mask, ``planning_token_share`` and ``planning_change_share``. Shares are
    None (curve empty) when there are no tokens or no change at all."""
    mask = mask.bool()
    c = change[mask].double().cpu()
    h = entropy[mask].double().cpu()
    if bool((c < 0).any()):
        raise ValueError("concentration: change must be >= 0 on every token")
    n = c.numel()
    order = torch.sort(h, descending=True, stable=True).indices
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), c[order].cumsum(0)])
    total = float(cum[-1])
    k_top = top_count(n, top)
    out = {"tokens": n, "top": top, "top_tokens": k_top, "total_change": total,
           "mean_change": total / n if n else 0.0, "top_share": None, "curve": []}
    if n and total > 0:
        shares = cum / cum[-1]
        ks = sorted({round(i * n / points) for i in range(points + 1)})
        out["curve"] = [[round(k / n, 6), round(float(shares[k]), 6)] for k in ks]
        out["top_share"] = float(shares[k_top])
    if planning is not None:
        p = planning.bool()[mask].cpu()
        out["planning_token_share"] = float(p.double().mean()) if n else None
        out["planning_change_share"] = float(c[p].sum() / total) if n and total > 0 else None
    return out


def _rows_per_forward(width: int, vocab: int) -> int:
    return max(1, LOGIT_BUDGET // max(1, width * vocab))


@torch.inference_mode()
def measure_models(before, after, prompts: list[list[int]], sampling: SamplingParams, tokenizer, grams, seed: int,
                   device, top: float = 0.2, batch_size: int = 256) -> dict:
    """Roll out ``before`` on ``prompts`` (replicated G times beforehand) as ``sampling`` says, score every
    response token under both models and return the concentration of the KL change (top-level keys, see
    ``concentration``, plus ``mean_kl``) with the same numbers for |Δ log p| under ``logp``."""
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    kl, dlogp, entropy, planning = [], [], [], []
    for s in range(0, len(prompts), batch_size):
        ro = generate(before, prompts[s:s + batch_size], sampling, seed + s, device)
        mask = ro.response_mask[:, 1:]
        plan = planning_token_mask(ro.tokens.cpu(), ro.response_mask.cpu(), tokenizer, grams)[:, 1:]
        width = ro.tokens.shape[1] - 1
        step = _rows_per_forward(width, tokenizer.vocab_size)
        for r in range(0, len(ro), step):
            tokens, m = ro.tokens[r:r + step], mask[r:r + step]
            inputs = tokens[:, :-1]
            tc = token_change(full_logits(after, inputs) / temperature, full_logits(before, inputs) / temperature,
                              tokens[:, 1:], m)
            kl.append(tc.kl[m].cpu())
            dlogp.append(tc.abs_dlogp[m].cpu())
            entropy.append(tc.entropy[m].cpu())
            planning.append(plan[r:r + step][m.cpu()])
    kl, dlogp, entropy, planning = (torch.cat(x) if x else torch.zeros(0) for x in (kl, dlogp, entropy, planning))
    every = torch.ones_like(kl, dtype=torch.bool)
    out = concentration(kl, entropy, every, top, planning.bool())
    by_logp = concentration(dlogp, entropy, every, top, planning.bool())
    out["mean_kl"] = out["mean_change"]
    out["mean_initial_entropy"] = float(entropy.double().mean()) if entropy.numel() else None
    out["logp"] = {k: by_logp[k] for k in ("top_share", "planning_change_share", "mean_change", "curve")}
    return out


def heldout_sample(n_items: int, count: int, seed: int) -> list[int]:
    """The fixed prompt sample: ``count`` item indices (all of them if fewer), a pure function of the seed."""
    return sorted(np.random.default_rng(seed).permutation(n_items)[:count].tolist())


def measure_concentration(model_cfg, rollout_cfg, eval_cfg, analysis_cfg, rt, rd, task, before_source: str,
                          after_source: str, seed: int) -> dict:
    """The concentration of ``after_source``'s change from ``before_source`` (stage names or checkpoint paths) on
    ``eval_cfg.concentration_prompts`` prompts of ``task`` × ``rollout_cfg.group_size`` samples. Every rank computes
    the same numbers (a tensor-parallel forward needs all of them); the caller writes them once."""
    tok = task.tokenizer
    pick = heldout_sample(len(task), eval_cfg.concentration_prompts, seed)
    group = rollout_cfg.group_size
    prompts = [task.prompt_ids(task.items[i]) for i in pick for _ in range(group)]
    sampling = SamplingParams.from_rollout(rollout_cfg, tok, max_new_tokens=eval_cfg.max_new_tokens)
    before = load_eval_model(model_cfg, rt, rd, before_source, tok.vocab_size)
    after = load_eval_model(model_cfg, rt, rd, after_source, tok.vocab_size)
    out = measure_models(before, after, prompts, sampling, tok, analysis_cfg.strategic_grams, seed, rt.device)
    log.info("concentration %s vs %s: top-%.0f%% share %s of the KL change over %d tokens (mean KL %.3g nats)",
             after_source, before_source, 100 * out["top"], out["top_share"], out["tokens"], out["mean_kl"])
    return {**out, "prompts": len(pick), "samples_per_prompt": group, "before": before_source, "after": after_source}
