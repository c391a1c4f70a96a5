"""The one hook for algorithms that add generation or forwards to an RL step (Critique-GRPO, SDPO, and the next
one): the step and the update call these methods and know no algorithm by name.

A ``FeedbackAlgorithm`` lives on the ``RLSetup`` for a whole stage. Each step, after the batch is built, its
``prepare`` returns the batch with one ``FeedbackTerm`` added to ``batch.feedback`` (what it computed for this
batch: refinement tokens, a teacher's targets); the update hands every micro-batch's policy terms through each
term's ``loss_terms``; after the update ``after_update`` runs (an EMA teacher moves), and ``metrics`` adds the
algorithm's own whole-batch figures. Critique-GRPO's refinements are also generated inside ``collect`` (they
replace failed responses before rewards and advantages); that call is the refiner's own.
"""

from __future__ import annotations

from typing import Any, Protocol

from rpt.algo.losses import PolicyInputs, PolicyTerms


class FeedbackTerm(Protocol):
    def loss_terms(self, terms: PolicyTerms, inputs: PolicyInputs, model, rollouts, rows: range,
                   temperature: float) -> PolicyTerms:
        """The micro-batch ``rows``' policy terms with this algorithm's part added (with gradient to ``model``)."""


class FeedbackAlgorithm(Protocol):
    def prepare(self, batch, collected, micro_batch: int, temperature: float) -> Any:
        """``batch`` (an ``RLBatch``) with this algorithm's ``FeedbackTerm`` for it appended to ``batch.feedback``."""

    def after_update(self) -> None:
        """Runs once after each step's update (every rank)."""

    def metrics(self, batch, values, collected) -> dict:
        """Whole-batch metrics of this step (every rank calls it: same collectives)."""
