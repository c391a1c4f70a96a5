"""The offline demo corpus: reasoning-gym arithmetic problems rendered as text documents.

The corpus is built the way a reasoning model's pre-training mix is, so that reasoning *can* help next-token
prediction: some documents carry worked solutions in the think format
(``4 - 1 + 7 = <think> 4 - 1 = 3 , 3 + 7 = 10 </think> \\boxed{10} 10``), others state results bare
(``4 - 1 + 7 = 10``). A model that predicts the bare result directly must add several numbers in one step; one
that first writes the worked steps only needs the two-term facts it has seen many times. The RPT split holds
bare documents only, like the math corpus of the paper.
"""

from __future__ import annotations

import random

import reasoning_gym

from data_prep.tokenizer_train import THINK_CLOSE, THINK_OPEN


def evaluate_steps(expression: str) -> list[tuple[int, str, int, int]]:
    """Left-to-right partial results of ``a op b op c ...``: [(lhs, op, rhs, result), ...]."""
    parts = expression.split()
    if len(parts) < 3 or len(parts) % 2 == 0:
        raise ValueError(f"not a chain expression: {expression!r}")
    acc = int(parts[0])
    steps = []
    for op, rhs in zip(parts[1::2], parts[2::2]):
        value = int(rhs)
        if op == "+":
            result = acc + value
        elif op == "-":
            result = acc - value
        else:
            raise ValueError(f"unsupported operator {op!r} in {expression!r}")
        steps.append((acc, op, value, result))
        acc = result
    return steps


def worked_solution(expression: str) -> str:
    """The think-format solution body, e.g. `` 4 - 1 = 3 , 3 + 7 = 10 ``."""
    return " , ".join(f"{a} {op} {b} = {r}" for a, op, b, r in evaluate_steps(expression))


def render_problem(expression: str, answer: str, worked: bool) -> str:
    if worked:
        return f"{expression} = {THINK_OPEN} {worked_solution(expression)} {THINK_CLOSE} \\boxed{{{answer}}} {answer}"
    return f"{expression} = {answer}"


def generate_documents(data_cfg, num_docs: int, worked_fraction: float, seed: int) -> list[str]:
    """``num_docs`` documents of ``problems_per_doc`` problems each; a ``worked_fraction`` share is worked."""
    entries = reasoning_gym.create_dataset(
        data_cfg.demo_task, size=num_docs * data_cfg.problems_per_doc, seed=seed,
        min_terms=data_cfg.demo_min_terms, max_terms=data_cfg.demo_max_terms,
        min_digits=data_cfg.demo_digits, max_digits=data_cfg.demo_digits)
    rng = random.Random(seed)
    docs = []
    for d in range(num_docs):
        worked = rng.random() < worked_fraction
        lines = []
        for i in range(data_cfg.problems_per_doc):
            entry = entries[d * data_cfg.problems_per_doc + i]
            lines.append(render_problem(entry["metadata"]["expression"], str(entry["answer"]), worked))
        docs.append("\n".join(lines) + "\n")
    return docs
