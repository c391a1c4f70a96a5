"""RLP (arXiv 2510.01265, "RLP: Reinforcement as a Pretraining Objective"): the thought's reward is the information
gain it brings to the true next token(s), against a no-think EMA baseline.

At a corpus position t with context x_<t the policy samples a thought c_t exactly as in RPT (the rollout's whole
response, a trailing end-of-sequence token dropped); then

    r(c_t) = log p_θ(x_t | x_<t, c_t) − log p_φ(x_t | x_<t)

- the first term: the trainer's log-prob of the true target token(s) scored after [prompt + thought + bridge], under
  ``no_grad`` (the prediction is scored, not trained: the target tokens never enter the rollout, so the policy
  gradient reaches the thought tokens only);
- the second: the same target after [prompt + bridge] under φ, an exponential moving average of the policy
  (φ ← (1 − λ) φ + λ θ after every step, λ = ``algo.rlp.ema_rate``, the paper's 0.001), starting from the stage's
  initial weights and saved in every checkpoint (``Trainable.extra_models["rlp_ema"]``) so a resumed run
  reproduces the uninterrupted one. With an empty thought and φ = θ both inputs are the same tokens: r = 0. φ is
  kept in float32 whatever ``run.dtype`` (one float32 copy of the model; under bfloat16 the two terms then differ by
  the policy's rounding too, a per-position constant that the group-relative advantages cancel).

``bridge`` (``algo.rlp.bridge``) is the text between the thought and the scored target, the same in both terms
(default ``\\n\\boxed{``: the prediction is read where the RPT prompt asks for it; the paper reads it right after
its ``</think>``). ``algo.rlp.target_tokens`` = k > 1 scores the first k stored target tokens (teacher-forced, the
sum of their log-probs: the span's log-prob, our extension; the paper scores the next token, k = 1).

The rewards then take the ordinary path: group-relative advantages (``conf/algo/rlp.yaml``: r − mean of the
group, no std; the paper subtracts the group mean and rescales), the clipped surrogate on the response (= thought)
tokens. Note: the EMA term is one number per position, shared by the G thoughts of its group, so group-relative
advantages cancel it; it sets what a reward means (> 0: the thought helped against not thinking) and what is logged,
not the update (``tests/test_rlp.py`` checks both). The reward the task itself computes (RPT's prefix match) stays
in ``reward_mean`` / ``accuracy`` for comparison; the gain and its two terms are logged as ``rlp_gain_mean``,
``rlp_gain_std``, ``rlp_gain_positive_share``, ``rlp_logp_thought``, ``rlp_logp_ema``. Implemented as a
``FeedbackAlgorithm`` whose ``refine`` replaces each draw's rewards (``rpt.train.feedback``), before dynamic sampling
and the advantages.

Sources: arXiv 2510.01265 (abstract: the reward is "the increase in log-likelihood of the next token when
conditioning on both context and a sampled reasoning chain, compared to conditioning on context alone"); the EMA
rate, G = 16 and the thought-only clipped surrogate as summarised from the paper's method section (no training code
released: NVlabs/RLP holds a README and the PDF).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rpt.distributed import dp_gather, dp_mean_of
from rpt.errors import Refusal
from rpt.model.build import build_model
from rpt.model.forward import sequence_logprobs, unwrap
from rpt.train.feedback import FeedbackAlgorithm


def target_ids(task, item) -> list[int]:
    """The true continuation of ``item`` as token ids: a next-token item's stored ``target``; otherwise the task's
    reference text, encoded."""
    if isinstance(item, Mapping) and "target" in item:
        return [int(t) for t in item["target"]]
    return task.tokenizer.encode(task.reference(item))


@torch.no_grad()
def target_logprob(model, contexts: list[list[int]], targets: list[list[int]], device, rows: int = 64,
                   chunk_tokens: int = 1024) -> torch.Tensor:
    """``[N]`` float32 Σ_j log p(target_j | context, target_<j) under ``model`` (temperature 1, no gradient),
    ``rows`` sequences per forward, right-padded (causal attention: padding never reaches the positions read)."""
    out = torch.zeros(len(contexts), dtype=torch.float32)
    for start in range(0, len(contexts), max(rows, 1)):
        ctx, tgt = contexts[start:start + rows], targets[start:start + rows]
        width = max(len(c) + len(t) for c, t in zip(ctx, tgt, strict=True)) - 1
        inputs = torch.zeros(len(ctx), width, dtype=torch.long)
        labels = torch.zeros_like(inputs)
        where = torch.zeros_like(inputs, dtype=torch.bool)
        for i, (c, t) in enumerate(zip(ctx, tgt, strict=True)):
            seq = torch.tensor(c + t, dtype=torch.long)
            inputs[i, :len(seq) - 1], labels[i, :len(seq) - 1] = seq[:-1], seq[1:]
            where[i, len(c) - 1:len(seq) - 1] = True
        logp, _ = sequence_logprobs(model, inputs.to(device), labels.to(device), 1.0, where.to(device),
                                    chunk_tokens)
        out[start:start + len(ctx)] = logp.sum(1).float().cpu()
    return out


class InformationGain(FeedbackAlgorithm):
    """RLP's reward and EMA baseline for one RL stage (``algo.rlp``)."""

    def __init__(self, cfg, task, trainable, group_size: int, ema_init=None, model_cfg=None, micro_batch: int = 64):
        self.cfg, self.task, self.trainable, self.group_size = cfg, task, trainable, group_size
        self.micro_batch = micro_batch
        source = ema_init if ema_init is not None else unwrap(trainable.model)  # None: the trainable's weights
        if ema_init is None or any(p.dtype != torch.float32 for p in ema_init.parameters()):
            # float32 whatever the run's dtype: a bfloat16 φ would round steps of 0.001·(θ − φ) away
            ema_init = build_model(model_cfg, unwrap(trainable.model).vocab_size, torch.float32)
            ema_init.load_state_dict(source.state_dict())
        self.ema = ema_init.eval().requires_grad_(False)
        trainable.extra_models["rlp_ema"] = self.ema  # state: saved and resumed with every checkpoint
        self.last = (torch.zeros(0), torch.zeros(0), torch.zeros(0))  # this step's (gain, policy, baseline) terms

    def rewards(self, model, items: list, rollouts, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(gain, log p_θ, log p_φ)``, each ``[rows]``, for the rows of one draw (``items``: G rows each)."""
        G, tok = self.group_size, self.task.tokenizer
        bridge = tok.encode(self.cfg.bridge) if self.cfg.bridge else []
        k = self.cfg.target_tokens
        targets = [target_ids(self.task, item)[:k] for item in items]
        if any(not t for t in targets):
            raise Refusal("algo.rlp: an item has no stored target token to score (a next-token item's 'target', or "
                          "the task's reference text)")
        prompts, thoughts = [], []
        for i in range(len(rollouts)):
            prompts.append(rollouts.tokens[i, :int(rollouts.prompt_lens[i])].tolist())
            thought = rollouts.response_ids(i)
            thoughts.append(thought[:-1] if thought and thought[-1] == tok.eos_id else thought)
        contexts = [p + c + bridge for p, c in zip(prompts, thoughts, strict=True)]
        longest = max((len(c) + len(targets[i // G]) for i, c in enumerate(contexts)), default=0)
        limit = getattr(unwrap(model), "max_sequence_length", None)
        if limit is not None and longest > limit:
            raise Refusal(f"algo.rlp scores {longest} tokens (prompt + thought + bridge + target), past the model's "
                          f"context of {limit} (model.max_position_embeddings): shorten the prompts "
                          f"(select.max_context_tokens), the thoughts (rollout.max_new_tokens) or "
                          f"algo.rlp.target_tokens")
        policy = target_logprob(model, contexts, [targets[i // G] for i in range(len(rollouts))], device,
                                self.micro_batch, self.cfg.chunk_tokens)
        # the no-think baseline does not depend on the thought: once per group
        baseline = target_logprob(self.ema, [prompts[g * G] + bridge for g in range(len(items))], targets, device,
                                  self.micro_batch, self.cfg.chunk_tokens).repeat_interleave(G)
        return policy - baseline, policy, baseline

    def refine(self, model, items, rollouts, texts, rewards, seed, device):
        gain, policy, baseline = self.rewards(model, items, rollouts, device)
        self.last = tuple(torch.cat([a, b]) for a, b in zip(self.last, (gain, policy, baseline), strict=True))
        return rollouts, texts, gain.to(rewards.dtype if rewards.is_floating_point() else torch.float32), \
            torch.zeros(len(texts), dtype=torch.bool)

    def prepare(self, batch, collected, micro_batch: int, temperature: float):
        return batch  # nothing to add to the loss: the gain is the reward

    @torch.no_grad()
    def after_update(self) -> None:
        """φ ← (1 − λ)·φ + λ·θ."""
        for e, p in zip(self.ema.parameters(), unwrap(self.trainable.model).parameters(), strict=True):
            e.lerp_(p.detach().to(e.dtype), self.cfg.ema_rate)

    def metrics(self, batch, values, collected) -> dict:
        """The information gain of every drawn thought (refills included) and its two terms."""
        gain, policy, baseline = self.last
        self.last = (torch.zeros(0), torch.zeros(0), torch.zeros(0))
        every, _ = dp_gather(gain.float())
        return {"rlp_gain_mean": dp_mean_of(gain.float()), "rlp_logp_thought": dp_mean_of(policy.float()),
                "rlp_logp_ema": dp_mean_of(baseline.float()),
                "rlp_gain_std": float(every.std(unbiased=False)) if every.numel() else None,
                "rlp_gain_positive_share": dp_mean_of((gain > 0).float())}
