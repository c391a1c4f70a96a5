"""Filters on generated arithmetic problems, shared by the downstream reasoning-gym task (``rl_task.operators``)
and the demo corpus (``data.demo_operators``), so both mean the same thing by "uses only these operators"."""

from __future__ import annotations


def uses_only(expression: str, operators) -> bool:
    """True if every operator of a chain expression (``a op b op c ...``) is in ``operators`` (None: any)."""
    return operators is None or all(op in operators for op in expression.split()[1::2])
