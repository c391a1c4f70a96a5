"""The offline demo corpus: reasoning-gym arithmetic problems rendered as text documents.

The corpus is built the way a reasoning model's pre-training mix is, so that reasoning *can* help next-token
prediction: some documents carry worked solutions in the think format
(``4 - 1 + 7 = <think> 3 + 7 = 10 </think> \\boxed{10} 10``), others state results bare
(``4 - 1 + 7 = 10``). A model that predicts the bare result directly must add several numbers in one step; one
that first writes the worked steps only needs the two-term facts it has seen many times. The RPT split holds
bare documents only, like the math corpus of the paper.

Held out by content: documents held out by id once still carried training problems (reasoning-gym's draws with
different seeds are shifted copies of one stream, so every held-out problem of an earlier demo was a pretraining
problem). Problems are split by expression (``rpt.tasks.filters.problem_pool``, a ``data.heldout_fraction`` share
of the problem space held out): validation and test documents are drawn from the held-out problems, every training
document (pretraining and RPT-train) from the rest. The two-term sums cannot be split and stay shared; `prep`'s
contamination table states their overlap.
"""

from __future__ import annotations

import random

import reasoning_gym

from data_prep.tokenizer_train import THINK_CLOSE, THINK_OPEN
from rpt.tasks.demonstrations import worked_solution  # the think-format body, shared with stage sft
from rpt.tasks.filters import in_pool, uses_only


def evaluate_steps(expression: str) -> list[tuple[int, str, int, int]]:
    """Left-to-right partial results of ``a op b op c ...``: [(lhs, op, rhs, result), ...]."""
    parts = expression.split()
    if len(parts) < 3 or len(parts) % 2 == 0:
        raise ValueError(f"not a chain expression: {expression!r}")
    acc = int(parts[0])
    steps = []
    for op, rhs in zip(parts[1::2], parts[2::2], strict=True):
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


def render_problem(expression: str, answer: str, worked: bool) -> str:
    if worked:
        return f"{expression} = {THINK_OPEN} {worked_solution(expression)} {THINK_CLOSE} \\boxed{{{answer}}} {answer}"
    return f"{expression} = {answer}"


def running_total_nonnegative(expression: str) -> bool:
    return all(result >= 0 for *_, result in evaluate_steps(expression))


# reasoning-gym's item i of seed s is item i + (s - t) of seed t: held-out documents read the stream this far from
# every training stream, so even the shared two-term problems do not come in the training documents' order (a
# shifted copy of that order made whole runs of held-out problems, and so their 13-grams, training text)
HELDOUT_STREAM = 10 ** 9


def _keep(data_cfg, expression: str, pool: str) -> bool:
    return uses_only(expression, data_cfg.demo_operators) and (
        not data_cfg.demo_nonnegative or running_total_nonnegative(expression)) and (
        in_pool(expression, data_cfg.heldout_fraction, pool))


def draw_problems(data_cfg, count: int, seed: int, terms: int, pool: str = "train") -> list[dict]:
    """``count`` reasoning-gym entries of ``terms`` operands, filtered to ``demo_operators`` and, with
    ``demo_nonnegative``, to running totals >= 0 (every worked step is then a fact of one small table, which a
    tiny model learns in minutes; a "+"-only corpus also makes "+" vs "=" at most a coin flip, below the
    selection threshold, so the selected positions are the results). ``pool``: ``train`` or ``heldout``, the
    problems (``problem_pool``) documents of that kind may carry."""
    entries, batch, offset = [], max(64, 3 * count), 0
    while len(entries) < count:
        drawn = reasoning_gym.create_dataset(
            data_cfg.demo_task, size=batch, seed=seed + offset, min_terms=terms, max_terms=terms,
            min_digits=data_cfg.demo_digits, max_digits=data_cfg.demo_digits)
        entries += [e for e in drawn if _keep(data_cfg, e["metadata"]["expression"], pool)]
        offset += 104729
    return entries[:count]


def generate_documents(data_cfg, num_docs: int, worked_fraction: float, seed: int, pool: str = "train") -> list[str]:
    """``num_docs`` documents of ``problems_per_doc`` problems each, from ``pool``'s problems; a ``worked_fraction``
    share is worked.

    All problems of a document have the same number of operands (like one exercise sheet), so once a reader has
    seen the first problem, where ``=`` comes is predictable and the uncertain positions are the operands (pure
    noise) and the results (computable)."""
    rng = random.Random(seed)
    plan = [(rng.randint(data_cfg.demo_min_terms, data_cfg.demo_max_terms), rng.random() < worked_fraction)
            for _ in range(num_docs)]
    pools = {}
    for terms in sorted({t for t, _ in plan}):
        needed = sum(1 for t, _ in plan if t == terms) * data_cfg.problems_per_doc
        stream = seed * 31 + terms + (HELDOUT_STREAM if pool == "heldout" else 0)
        pools[terms] = iter(draw_problems(data_cfg, needed, stream, terms, pool))
    docs = []
    for terms, worked in plan:
        lines = [render_problem(e["metadata"]["expression"], str(e["answer"]), worked)
                 for e in (next(pools[terms]) for _ in range(data_cfg.problems_per_doc))]
        docs.append("\n".join(lines) + "\n")
    return docs
