"""The one hook for algorithms that add generation or forwards to an RL step (Critique-GRPO, SDPO, and the next
one): the step and the update call these methods and know no algorithm by name.

A ``FeedbackAlgorithm`` lives on the ``RLSetup`` for a whole stage. Each step, after the batch is built, its
``prepare`` returns the batch with one ``FeedbackTerm`` added to ``batch.feedback`` (what it computed for this
batch: refinement tokens, a teacher's targets); the update hands every micro-batch's policy terms through each
term's ``loss_terms``; after the update ``after_update`` runs (an EMA teacher moves), and ``metrics`` adds the
algorithm's own whole-batch figures. An algorithm that changes what was drawn (Critique-GRPO's refinements replace
failed responses before advantages) does it in ``refine``, which ``collect`` calls after each reward; the others
keep its default, which changes nothing. Algorithms written against this Protocol subclass it to inherit those
defaults.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from rpt.algo.losses import PolicyInputs, PolicyTerms


class FeedbackTerm(Protocol):
    def loss_terms(self, terms: PolicyTerms, inputs: PolicyInputs, model, rollouts, rows: range,
                   temperature: float) -> PolicyTerms:
        """The micro-batch ``rows``' policy terms with this algorithm's part added (with gradient to ``model``)."""


class FeedbackAlgorithm(Protocol):
    trains_without_advantage: bool = False  # the step updates even when every advantage is zero (SDPO's teacher)

    def refine(self, model, items: list, rollouts, texts: list[str], rewards: torch.Tensor, seed: int,
               device) -> tuple[Any, list[str], torch.Tensor, torch.Tensor]:
        """One rollout draw (``items``: its prompts' task items, G rows each) changed before its advantages: the
        rollouts, texts and rewards, and the bool ``[rows]`` mask of the rows this algorithm replaced. The default
        changes nothing."""
        return rollouts, texts, rewards, torch.zeros(len(texts), dtype=torch.bool)

    def prepare(self, batch, collected, micro_batch: int, temperature: float) -> Any:
        """``batch`` (an ``RLBatch``) with this algorithm's ``FeedbackTerm`` for it appended to ``batch.feedback``."""

    def after_update(self) -> None:
        """Runs once after each step's update (every rank)."""

    def metrics(self, batch, values, collected) -> dict:
        """Whole-batch metrics of this step (every rank calls it: same collectives)."""


def first_of(kind: type, parts) -> Any:
    """The first of ``parts`` that is a ``kind`` (None: none is): a run's algorithm, or a batch's term, by class."""
    return next((part for part in parts if isinstance(part, kind)), None)
