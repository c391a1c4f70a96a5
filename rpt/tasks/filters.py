"""Filters on generated arithmetic problems, shared by the downstream reasoning-gym task (``rl_task.operators``,
``rl_task.heldout_share``) and the demo corpus (``data.demo_operators``, its held-out problems), so both mean the
same thing by "uses only these operators" and by "a held-out problem".

Held out by content: reasoning-gym builds item i of seed s from ``Random(s + i)``, so item i of seed s is item
i + (s − t) of seed t, and draws with different seeds are shifted copies of one stream, never independent samples.
Problems are therefore split by a hash of the expression: a held-out share of the problem space is for evaluation
only (the demo's validation and test documents, the downstream test questions), the rest for training. Problems of
fewer than ``MIN_SPLIT_TERMS`` operands (the 100 two-term single-digit sums) are too few to split and stay shared.
"""

from __future__ import annotations

import hashlib

MIN_SPLIT_TERMS = 3


def uses_only(expression: str, operators) -> bool:
    """True if every operator of a chain expression (``a op b op c ...``) is in ``operators`` (None: any)."""
    return operators is None or all(op in operators for op in expression.split()[1::2])


def problem_pool(expression: str, heldout_share: float) -> str:
    """``heldout``, ``train``, or ``shared`` (fewer than ``MIN_SPLIT_TERMS`` operands): who may use this problem."""
    parts = expression.split()
    if (len(parts) + 1) // 2 < MIN_SPLIT_TERMS:
        return "shared"
    digest = hashlib.sha256(("problem:" + " ".join(parts)).encode()).hexdigest()[:8]
    return "heldout" if int(digest, 16) / 0xFFFFFFFF < heldout_share else "train"


def in_pool(expression: str, heldout_share: float, pool: str) -> bool:
    """True if documents or questions of ``pool`` (``train`` or ``heldout``) may use this problem."""
    return problem_pool(expression, heldout_share) in ("shared", pool)
