"""Critique-GRPO's rollout side (arXiv 2506.03106): critiques of failed responses and the policy's refinements,
which join their group before advantages are computed. The pure choices (gate, count, selection, shaping) live
in ``rpt.algo.critique``; this module generates text.

Per refined group (``rpt.algo.critique.refine_gate``), the first ``candidates`` failed responses each get a
critique and one refinement, sampled by the policy with the weights that sampled the group (before the update)
from ``prompt + refine_template(response, critique)``. The best ``k`` refinements (correct first) replace the
failed responses they refine; in the training batch a refinement row is ``prompt + refinement``, so the trainer
scores it under the plain prompt, as the paper's objective asks. Critiques:
- ``indicative``: "the answer is incorrect";
- ``ground_truth``: that, plus the reference: on next-token tasks (RPT) the true continuation's first
  ``reference_tokens`` tokens, on downstream tasks the task's ``reference`` (the reference answer);
- ``self``: the policy writes one under ``critique_template`` (``critique_max_tokens``, no answer stop).

Everything is local to the rank (generation, selection with a (seed, step, refill, rank) generator); the counts
behind the metrics are reduced once per step in ``metrics``, which every rank calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from rpt.algo.critique import choose_refinements, refine_gate, refinement_count, shape_refinements
from rpt.distributed import dp_mean_of, dp_sum
from rpt.rollout.engine import Rollouts, SamplingParams, generate
from rpt.train.feedback import FeedbackAlgorithm


def splice_rows(prompts: list[list[int]], source: Rollouts, pad_id: int) -> Rollouts:
    """Rows ``prompts[i] + source's response i`` (with its sampling log-probs and truncation flag)."""
    width = max((len(p) + int(n) for p, n in zip(prompts, source.response_lens.tolist(), strict=True)), default=1)
    n = len(prompts)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.bool)
    logprobs = torch.zeros(n, width)
    for i, prompt in enumerate(prompts):
        response = source.response_mask[i].cpu()
        ids, lps = source.tokens[i].cpu()[response], source.sample_logprobs[i].cpu()[response]
        span = slice(len(prompt), len(prompt) + len(ids))
        tokens[i, :len(prompt)] = torch.tensor(prompt)
        tokens[i, span], mask[i, span], logprobs[i, span] = ids, True, lps
    device = source.tokens.device
    return Rollouts(tokens.to(device), torch.tensor([len(p) for p in prompts], device=device), mask.to(device),
                    logprobs.to(device), source.truncated.clone())


def replace_rows(rollouts: Rollouts, rows: list[int], new: Rollouts, pad_id: int) -> Rollouts:
    """``rollouts`` with row ``rows[j]`` replaced by ``new``'s row j (widths padded to the wider)."""
    merged = Rollouts.concat([rollouts, new], pad_id)
    index = torch.arange(len(rollouts))
    index[torch.tensor(rows, dtype=torch.long)] = len(rollouts) + torch.arange(len(rows))
    return merged.select(index.to(merged.tokens.device))


@dataclass
class Refiner(FeedbackAlgorithm):
    """Critique + refinement generation for one RL stage (``algo.critique``)."""

    cfg: object  # rpt.config.CritiqueConfig
    task: object  # rpt.tasks.base.Task
    sampling: SamplingParams  # the rollout's sampling (refinements end like responses)
    group_size: int
    counts: dict = field(default_factory=lambda: {"groups": 0.0, "refined": 0.0, "generated": 0.0, "correct": 0.0})

    def __post_init__(self):
        self.k = refinement_count(self.group_size, self.cfg.ratio)

    def critique_text(self, item, answer: str | None) -> str:
        verdict = f"The answer {answer if answer is not None else '(none)'} is incorrect."
        if self.cfg.kind != "ground_truth":
            return verdict
        if hasattr(self.task, "target_bytes"):  # next-token task: the true continuation's first tokens
            first = b"".join(self.task.target_bytes(item)[:self.cfg.reference_tokens]).decode("utf-8", "replace")
            return f"{verdict} The correct answer begins with: {first}"
        return f"{verdict} The correct answer is: {self.task.reference(item)}"

    def self_critiques(self, model, prompts: list[list[int]], texts: list[str], seed: int, device) -> list[str]:
        tok = self.task.tokenizer
        asks = [p + tok.encode(self.cfg.critique_template.format(response=t)) for p, t in zip(prompts, texts,
                                                                                              strict=True)]
        params = replace(self.sampling, max_new_tokens=self.cfg.critique_max_tokens, stop=None)
        critiques = generate(model, asks, params, seed, device)
        return [tok.decode(critiques.response_ids(i)).strip() for i in range(len(asks))]

    def refine(self, model, items: list, rollouts: Rollouts, texts: list[str], rewards: torch.Tensor, seed: int,
               device) -> tuple[Rollouts, list[str], torch.Tensor, torch.Tensor]:
        """Refine the gated groups of one rollout draw; returns the rollouts, texts and rewards with the chosen
        refinements in place, and the bool ``[rows]`` mask of refinement rows."""
        G, tok = self.group_size, self.task.tokenizer
        refined = torch.zeros(len(texts), dtype=torch.bool)
        correct = self.task.is_correct(rewards)
        gated = refine_gate(correct, G, self.cfg.gate) if len(texts) else torch.zeros(0, dtype=torch.bool)
        self.counts["groups"] += len(items)
        self.counts["refined"] += float(gated.sum())
        sources = [i for g in gated.nonzero().flatten().tolist()
                   for i in [g * G + j for j in range(G) if not correct[g * G + j]][:self.cfg.candidates]]
        if not sources:
            return rollouts, texts, rewards, refined
        prompts = [self.task.prompt_ids(items[i // G]) for i in sources]
        answers = [self.task.extract(texts[i]) for i in sources]
        if self.cfg.kind == "self":
            critiques = self.self_critiques(model, prompts, [texts[i] for i in sources], seed + 1, device)
        else:
            critiques = [self.critique_text(items[i // G], a) for i, a in zip(sources, answers, strict=True)]
        asks = [p + tok.encode(self.cfg.refine_template.format(response=texts[i], critique=c))
                for p, i, c in zip(prompts, sources, critiques, strict=True)]
        refinements = generate(model, asks, self.sampling, seed, device)
        new_texts = [tok.decode(refinements.response_ids(j)) for j in range(len(asks))]
        new_rewards = torch.tensor([self.task.reward(items[i // G], t) for i, t in zip(sources, new_texts,
                                                                                        strict=True)])
        self.counts["generated"] += len(sources)
        self.counts["correct"] += float(self.task.is_correct(new_rewards).sum())
        gen = torch.Generator().manual_seed(seed)
        chosen = []
        for g in sorted({i // G for i in sources}):
            members = [j for j, i in enumerate(sources) if i // G == g]
            chosen += [members[j] for j in choose_refinements(self.task.is_correct(new_rewards[members]), self.k, gen)]
        rows = [sources[j] for j in chosen]
        spliced = splice_rows(prompts=[prompts[j] for j in chosen], source=refinements.select(torch.tensor(chosen)),
                              pad_id=tok.pad_id)
        rollouts = replace_rows(rollouts, rows, spliced, tok.pad_id)
        texts, rewards = list(texts), rewards.clone()
        for j, i in zip(chosen, rows, strict=True):
            texts[i], rewards[i], refined[i] = new_texts[j], new_rewards[j], True
        return rollouts, texts, rewards, refined

    def prepare(self, batch, collected, micro_batch: int, temperature: float):
        """The batch with its refinement tokens marked (they get the shaped objective in the update)."""
        shaping = RefinementShaping(refinement_tokens(collected.refined, batch.mask), self.cfg.gamma)
        return replace(batch, feedback=(*batch.feedback, shaping))

    def metrics(self, batch, values, collected) -> dict:
        """Refinement success rate (correct / generated), share of groups refined, and the entropy of the trained
        refinement tokens (whole batch; every rank calls it). Resets the step's counts."""
        c, refined = self.counts, collected.refined
        groups, gated, generated, correct = dp_sum(c["groups"], c["refined"], c["generated"], c["correct"])
        self.counts = {key: 0.0 for key in c}
        tokens = refinement_tokens(refined, batch.mask)
        return {"refine_success_rate": correct / generated if generated else None,
                "refined_group_share": gated / max(groups, 1.0),
                "refinement_row_share": dp_mean_of(refined.float()),
                "entropy_refinement": dp_mean_of(values.entropy[tokens], empty=None)}


@dataclass(frozen=True)
class RefinementShaping:
    """A batch's refinement tokens, whose policy term becomes −A · π/(π + γ) (``rpt.algo.critique``)."""

    tokens: torch.Tensor  # [N, T-1] bool
    gamma: float

    def loss_terms(self, terms, inputs, model, rollouts, rows: range, temperature: float):
        return shape_refinements(terms, inputs.logp, inputs.adv, self.tokens[rows.start:rows.stop], self.gamma)


def refinement_tokens(refined: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, T-1]`` response tokens of the refinement rows."""
    return mask & refined.to(mask.device).view(-1, 1)
