"""SDPO (arXiv 2601.20802): the policy conditioned on feedback is the teacher of its own on-policy responses.

For every response y of the batch, the teacher re-scores y's tokens under a teacher prompt ``x + feedback_template
(f)``; the update adds Σ_t D(π_θ(·|x, y<t) ‖ π_T(·|x, f, y<t)) over the teacher's top-K ids plus a tail bucket
(``rpt.algo.sdpo``) to λ × the configured GRPO policy term (``algo.sdpo.grpo_weight``; 0: pure SDPO). The teacher's
values are computed once per batch before the update, under ``no_grad`` (stop-gradient). A response with an empty
f gets no distillation term at all (the reference code's ``self_distillation_mask``): with the ``current`` teacher it
would be zero anyway, but an ``ema`` or ``mix`` teacher differs from the student by drift alone, which is no signal.

Feedback f (``algo.sdpo.feedback``, '+'-joined kinds, in this order):
- ``reference``: the task's ground truth; for RPT the stored true continuation (the corpus is the teacher's hint),
  for downstream tasks the reference answer;
- ``sibling``: a correct response of the same group, not the response itself (the paper's choice);
- ``verifier``: the verifier's verdict on a failed response ("the answer X was judged incorrect"; our verifiers
  return scores, not messages).

Teacher (``algo.sdpo.teacher``): ``current`` (the student's weights before the update: same weights, the paper's
default), ``ema`` (θ_T ← (1 − r) θ_T + r θ after every step, r = ``teacher_rate``; saved in every checkpoint through
``Trainable.extra_models`` so a resumed run matches an uninterrupted one), ``mix`` (θ_T = (1 − r) θ_init + r θ,
recomputed before each step from the initial weights: no state to save).

Differences from the paper's code: the K ids are the teacher's top K (computed once per batch); the distillation
term is aggregated with the batch's ``loss_agg`` weights (forking masks apply to it too); the student's logits for
it come from a second forward of the micro-batch (the policy term's forward returns only log-probs), so SDPO costs
one extra forward + backward per micro-batch plus one teacher forward per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rpt.algo.sdpo import topk_tail_divergence
from rpt.algo.token_choice import forking_mask
from rpt.distributed import dp_gather, dp_mean_of, dp_sum
from rpt.model.build import build_model
from rpt.model.forward import unwrap
from rpt.model.response_logits import chunked_reduce, response_hidden
from rpt.rollout.engine import Rollouts
from rpt.train.feedback import FeedbackAlgorithm
from rpt.train.refinement import splice_rows


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's view of one batch; ``distill`` adds the divergence to a micro-batch's policy terms."""

    ids: torch.Tensor  # [n_tokens, K] the teacher's top-K ids at each response token, in (row, t) order
    logp: torch.Tensor  # [n_tokens, K] the teacher's log-probs of those ids (full-vocabulary softmax)
    token_logp: torch.Tensor  # [N, T-1] the teacher's log-prob of each sampled response token (0 elsewhere)
    offsets: torch.Tensor  # [N + 1] row r's tokens are ids[offsets[r]:offsets[r + 1]]
    has_feedback: torch.Tensor  # [N] bool: f non-empty (else the teacher is the student)
    divergence: str  # kl | js
    grpo_weight: float  # λ on the GRPO policy term
    chunk: int  # response tokens per output-layer chunk
    shared_group: int  # forwards score groups of this many rows over one copy of their prompt (1: plain rows)

    def loss_terms(self, terms, inputs, model, rollouts: Rollouts, rows: range, temperature: float):
        """The feedback hook (``rpt.train.feedback``): the distillation term added to the policy terms."""
        return self.distill(terms, model, rollouts, rows, temperature)

    def distill(self, terms, model, rollouts: Rollouts, rows: range, temperature: float):
        """``terms`` with loss λ·loss + D_t at each response token of ``rows`` (with gradient to ``model``)."""
        part = rollouts.select(slice(rows.start, rows.stop))
        hidden, r, c = response_hidden(model, part.tokens, part.prompt_lens, part.response_lens, self.shared_group)
        tokens = slice(int(self.offsets[rows.start]), int(self.offsets[rows.stop]))

        def reduce(logits, ids, teacher):
            student = torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids)
            return (topk_tail_divergence(student, teacher, self.divergence),)

        (per_token,) = chunked_reduce(model, hidden, self.chunk, reduce, self.ids[tokens], self.logp[tokens])
        with_feedback = self.has_feedback[rows.start:rows.stop].to(per_token.device)[r]
        dense = torch.zeros_like(terms.loss).index_put((r, c), (per_token * with_feedback).to(terms.loss.dtype))
        return replace(terms, loss=self.grpo_weight * terms.loss + dense)


class SelfDistiller(FeedbackAlgorithm):
    """Feedback, teacher weights and teacher targets for one RL stage (``algo.sdpo``)."""

    trains_without_advantage = True  # the distillation term needs no advantage

    def __init__(self, cfg, task, trainable, group_size: int, teacher_init=None, model_cfg=None, dtype=None,
                 share_prompt: bool = True):
        self.cfg, self.task, self.trainable, self.group_size = cfg, task, trainable, group_size
        self.shared = group_size if share_prompt else 1
        self.kinds = cfg.feedback_kinds()
        self.teacher = self.initial = None
        if cfg.teacher != "current":
            if teacher_init is None:  # a copy of the trainable's current weights (a fresh start)
                teacher_init = build_model(model_cfg, unwrap(trainable.model).vocab_size, dtype)
                teacher_init.load_state_dict(unwrap(trainable.model).state_dict())
            self.teacher = teacher_init.eval().requires_grad_(False)
            if cfg.teacher == "mix":
                self.initial = [p.detach().clone() for p in self.teacher.parameters()]
            else:  # the EMA is state: saved and resumed with every checkpoint
                trainable.extra_models["sdpo_teacher"] = self.teacher

    def feedback(self, item, texts: list[str], rewards: torch.Tensor, i: int) -> str:
        """f for response ``i`` of its group (``texts``/``rewards`` of that group)."""
        parts = []
        for kind in self.kinds:
            if kind == "reference":
                parts.append(self.task.reference(item))
            elif kind == "sibling":
                parts += [t for j, t in enumerate(texts) if j != i and self.task.is_correct(rewards[j])][:1]
            elif not self.task.is_correct(rewards[i]):
                answer = self.task.extract(texts[i])
                parts.append(f"Your answer {answer if answer is not None else '(none)'} was judged incorrect.")
        return "\n".join(p for p in parts if p)

    def prepare(self, batch, collected, micro_batch: int, temperature: float):
        """The batch with the teacher's targets for every response token (computed here, before the update)."""
        targets = self.targets(batch.rollouts, collected.items, collected.texts, collected.rewards, micro_batch,
                               temperature)
        return replace(batch, feedback=(*batch.feedback, targets))

    @torch.no_grad()
    def targets(self, rollouts: Rollouts, items: list, texts: list[str], rewards: torch.Tensor, micro_batch: int,
                temperature: float) -> TeacherTargets:
        """The teacher's top-K and token log-probs over every response token of ``rollouts`` (no gradient)."""
        G, tok, cfg = self.group_size, self.task.tokenizer, self.cfg
        feedback = [self.feedback(items[i // G], texts[i - i % G:i - i % G + G], rewards[i - i % G:i - i % G + G],
                                  i % G) for i in range(len(rollouts))]
        prompts = [rollouts.tokens[i, :int(rollouts.prompt_lens[i])].tolist() for i in range(len(rollouts))]
        prompts = [p + tok.encode(cfg.feedback_template.format(feedback=f)) if f else p
                   for p, f in zip(prompts, feedback, strict=True)]
        rows = splice_rows(prompts, rollouts, tok.pad_id)
        model = self.teacher_model()
        k = min(cfg.top_k, unwrap(model).vocab_size)
        ids, logp, token_logp = [], [], torch.zeros_like(rollouts.sample_logprobs[:, 1:])

        def reduce(logits, targets):
            full = torch.log_softmax(logits / temperature, dim=-1)
            top = full.topk(k, dim=-1)
            return top.indices, top.values, full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

        size = max(G, micro_batch - micro_batch % G)  # whole groups
        for start in range(0, len(rows), size):
            part = rows.select(slice(start, start + size))
            hidden, r, c = response_hidden(model, part.tokens, part.prompt_lens, part.response_lens, self.shared)
            top_ids, top_logp, own = chunked_reduce(model, hidden, cfg.chunk_tokens, reduce, part.tokens[r, c + 1])
            ids.append(top_ids)
            logp.append(top_logp)
            # the same response token in the student's layout: row start + r, column student prompt_len - 1 + t
            t = c - (part.prompt_lens[r] - 1)
            token_logp[start + r, rollouts.prompt_lens[start + r] - 1 + t] = own
        lens = rollouts.response_lens.cpu()
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        empty = torch.zeros(0, k, device=token_logp.device)
        return TeacherTargets(torch.cat(ids) if ids else empty.long(), torch.cat(logp) if logp else empty,
                              token_logp, offsets, torch.tensor([bool(f) for f in feedback]), cfg.divergence,
                              cfg.grpo_weight, cfg.chunk_tokens, self.shared)

    def teacher_model(self):
        if self.teacher is None:
            return self.trainable.model
        if self.initial is not None:  # mix: (1 - r)·θ_init + r·θ, from the current weights
            for t, init, s in zip(self.teacher.parameters(), self.initial, unwrap(self.trainable.model).parameters(),
                                  strict=True):
                t.copy_(torch.lerp(init, s.detach().to(init.dtype), self.cfg.teacher_rate))
        return self.teacher

    @torch.no_grad()
    def after_update(self) -> None:
        """EMA teacher: θ_T ← (1 − r)·θ_T + r·θ."""
        if self.teacher is not None and self.initial is None:
            for t, s in zip(self.teacher.parameters(), unwrap(self.trainable.model).parameters(), strict=True):
                t.lerp_(s.detach().to(t.dtype), self.cfg.teacher_rate)

    def metrics(self, batch, values, collected) -> dict:
        """Dense credit: the per-token advantages a_t = log π_T(y_t) − log π_θ(y_t) of the responses with feedback
        (distribution over the whole batch) and the share of Σ|a_t| on the top-20% entropy tokens; share of
        responses with feedback."""
        targets = batch.feedback_of(TeacherTargets)
        mask = batch.mask & targets.has_feedback.to(batch.mask.device)[:, None]
        credit = (targets.token_logp - values.logp)[mask].float()
        high = forking_mask(values.entropy, mask, 0.2)
        on_high, total = dp_sum(float((targets.token_logp - values.logp).abs()[high].sum()), float(credit.abs().sum()))
        every, _ = dp_gather(credit)
        out = {"sdpo_feedback_share": dp_mean_of(targets.has_feedback.float()),
               "sdpo_credit_high_entropy_share": on_high / total if total else None,
               "sdpo_credit_mean": float(every.mean()) if every.numel() else None,
               "sdpo_credit_std": float(every.std(unbiased=False)) if every.numel() else None}
        for q in (0.1, 0.5, 0.9):
            out[f"sdpo_credit_p{int(q * 100)}"] = float(every.quantile(q)) if every.numel() else None
        return out

