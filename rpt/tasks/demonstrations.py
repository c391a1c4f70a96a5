"""Demonstrations for supervised fine-tuning (stage `sft`): prompt/response token pairs.

Two sources:

- **Worked solutions** of chain expressions (``a op b op c ...`` with ``+``/``-``: reasoning-gym ``chain_sum``
  questions, whose ``metadata`` carries the expression) in the demo corpus's think format. Each line rewrites the
  one before with two adjacent terms reduced, until one number is left: ``9 + 6 + 5 = <think> 15 + 5 = 20
  </think> \\boxed{20}``. ``worked_solution`` is that left-to-right rendering (the demo corpus renders its worked
  documents with it); ``worked_solutions`` renders several *orders of operations* of one problem: from the right
  (``9 + 11 = 20``), adjacent pairs first (``15 + 7 = 22`` for ``9 + 6 + 3 + 4``), or the terms first written in
  another order, then reduced (``9 + 5 + 6 = 14 + 6 = 20``). Terms keep their signs, so every line of every order
  equals the expression, ``-`` chains included.
- **Records** of local jsonl/json/parquet files (one text field for the prompt, one for the response), read with
  ``datasets`` (``rpt.sources.local_files``); records with a missing, non-text or empty field are counted and
  skipped.

A response ends with the tokenizer's end-of-sequence token (when it has one), as a trained policy stops.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rpt.sources import local_files

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # the think format's markers (data_prep.tokenizer_train's)
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Demonstration:
    prompt: tuple[int, ...]  # prompt token ids (no loss)
    response: tuple[int, ...]  # response token ids, EOS included (the loss)


# ---------------------------------------------------------------------------------------------------------------
# worked solutions of chain expressions


@dataclass(frozen=True)
class _Term:
    op: str  # "+" or "-"
    text: str  # the magnitude as written (an operand's own text, or a computed value)

    @property
    def value(self) -> int:
        return int(self.text) if self.op == "+" else -int(self.text)

    @classmethod
    def of(cls, value: int) -> _Term:
        return cls("-" if value < 0 else "+", str(abs(value)))


def parse_chain(expression: str) -> list[_Term]:
    """The signed terms of ``a op b op c ...`` (``op`` in ``+``/``-``); ValueError for anything else."""
    parts = expression.split()
    if len(parts) < 3 or len(parts) % 2 == 0:
        raise ValueError(f"not a chain expression: {expression!r}")
    first = parts[0]
    terms = [_Term("-", first[1:]) if first.startswith("-") else _Term("+", first)]
    for op, operand in zip(parts[1::2], parts[2::2], strict=True):
        if op not in ("+", "-"):
            raise ValueError(f"unsupported operator {op!r} in {expression!r}")
        terms.append(_Term(op, operand))
    for term in terms:
        if not term.text.isdigit():
            raise ValueError(f"not an integer operand {term.text!r} in {expression!r}")
    return terms


def _line(terms: list[_Term]) -> str:
    first, rest = terms[0], terms[1:]
    return " ".join([("-" if first.op == "-" else "") + first.text, *(f"{t.op} {t.text}" for t in rest)])


def _reduce(terms: list[_Term], pair: int) -> list[_Term]:
    return [*terms[:pair], _Term.of(terms[pair].value + terms[pair + 1].value), *terms[pair + 2:]]


def _render(terms: list[_Term], perm: tuple[int, ...], picks: tuple[int, ...]) -> str:
    """The solution body: the terms in ``perm``'s order (a line of its own when that changes the text), then one
    line per reduction of the adjacent pair at ``picks[j]``."""
    lines = []
    current = [terms[i] for i in perm]
    if _line(current) != _line(terms):
        lines.append(_line(current))
    for pair in picks:
        current = _reduce(current, pair)
        lines.append(_line(current))
    return " = ".join(lines)


def _named_orders(terms: list[_Term]) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(perm, picks) of the orders tried first: left to right (the demo corpus's), from the right, adjacent
    pairs first, the terms reversed, the largest term first."""
    n = len(terms)
    identity, ltr = tuple(range(n)), (0,) * (n - 1)
    yield identity, ltr
    yield identity, tuple(range(n - 2, -1, -1))
    picks, p = [], 0
    for m in range(n, 1, -1):  # m terms left: reduce the pair after the last one reduced, wrapping to the front
        p = p if p <= m - 2 else 0
        picks.append(p)
        p += 1
    yield identity, tuple(picks)
    yield tuple(reversed(identity)), ltr
    yield tuple(sorted(identity, key=lambda i: -terms[i].value)), ltr


def _all_orders(terms: list[_Term]) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    n = len(terms)
    for perm in itertools.permutations(range(n)):
        for picks in itertools.product(*(range(m - 1) for m in range(n, 1, -1))):
            yield perm, picks


def worked_solution(expression: str) -> str:
    """The left-to-right solution body (``4 - 1 + 7`` → ``3 + 7 = 10``): the first two terms reduced, the rest
    copied, until one number is left. Each step is one two-term fact plus copying, which even a tiny model
    learns; the demo corpus's worked documents are rendered with it."""
    terms = parse_chain(expression)
    return _render(terms, tuple(range(len(terms))), (0,) * (len(terms) - 1))


def worked_solutions(expression: str, count: int) -> list[str]:
    """Up to ``count`` distinct solution bodies of ``expression`` in different orders of operations, left to right
    first, then the other named orders (see ``_named_orders``), then every other (permutation, reduction order)
    in enumeration order; fewer when the expression has fewer (``2 + 2``: one)."""
    terms = parse_chain(expression)
    out: list[str] = []
    for perm, picks in itertools.chain(_named_orders(terms), _all_orders(terms)):
        if len(out) >= count:
            break
        body = _render(terms, perm, picks)
        if body not in out:
            out.append(body)
    return out


def chain_value(line: str) -> int:
    """The value of one line of a worked solution (a chain expression or a number)."""
    terms = parse_chain(line) if len(line.split()) > 1 else [_Term.of(int(line))]
    return sum(t.value for t in terms)


def think_response(prompt_text: str, body: str, answer: str) -> str:
    """The response completing ``prompt_text`` with a worked ``body`` and the boxed answer, in the think format
    (``<think>`` is written unless the prompt already ends with it)."""
    opening = "" if prompt_text.rstrip().endswith(THINK_OPEN) else f" {THINK_OPEN}"
    return f"{opening} {body} {THINK_CLOSE} \\boxed{{{answer}}}"


def _with_eos(ids: list[int], tokenizer) -> tuple[int, ...]:
    return tuple(ids) + ((tokenizer.eos_id,) if tokenizer.eos_id is not None and tokenizer.eos_id >= 0 else ())


def chain_demonstrations(task, orders: int, max_tokens: int | None = None) -> tuple[list[Demonstration], Counter]:
    """Up to ``orders`` worked demonstrations of every item of ``task`` (a reasoning-gym task over chain
    expressions: ``item["metadata"]["expression"]``), item by item, in the task's item order. The prompt is the
    task's own ``prompt_ids(item)``. Items without a chain expression (other generators of a mixture), whose
    solution disagrees with the item's answer, or longer than ``max_tokens`` are counted (by reason), skipped."""
    tok = task.tokenizer
    demos, skipped = [], Counter()
    for item in task.items:
        expression = (item.get("metadata") or {}).get("expression") if isinstance(item, dict) else None
        if not isinstance(expression, str):
            skipped["no expression"] += 1
            continue
        try:
            bodies = worked_solutions(expression, orders)
        except ValueError:
            skipped["not a +/- chain"] += 1
            continue
        answer = str(sum(t.value for t in parse_chain(expression)))
        if answer != str(item.get("answer", answer)).strip():
            skipped["answer mismatch"] += 1
            continue
        prompt_text = task.prompt_text(item)
        prompt = tuple(task.prompt_ids(item))
        for body in bodies:
            response = _with_eos(tok.encode(think_response(prompt_text, body, answer)), tok)
            if max_tokens is not None and len(prompt) + len(response) > max_tokens:
                skipped["too long"] += 1
                continue
            demos.append(Demonstration(prompt, response))
    return demos, skipped


# ---------------------------------------------------------------------------------------------------------------
# prompt/response records from local files


def file_demonstrations(sft_cfg, tokenizer, max_tokens: int | None = None) -> tuple[list[Demonstration], Counter]:
    """The prompt/response records of ``sft_cfg.path`` (local .jsonl/.json/.parquet files, glob ok) as
    demonstrations, in file order: the prompt text encoded as is, the response text followed by EOS. Records with a
    missing, non-text or empty (whitespace-only) field, or longer than ``max_tokens``, are counted and skipped; a
    ValueError when a field is in no record or no record is left."""
    import datasets

    if not sft_cfg.path:
        raise ValueError("sft.source=jsonl needs sft.path (local .jsonl/.json/.parquet files, glob ok)")
    local = local_files(sft_cfg.path, _BUILDERS, "sft.path")
    if local is None:
        raise FileNotFoundError(f"sft.path {sft_cfg.path!r} matches no local file")
    files, ext = local
    records = datasets.load_dataset(_BUILDERS[ext], data_files=files, split="train")
    fields = (sft_cfg.prompt_field, sft_cfg.response_field)
    absent = [f for f in fields if f not in records.column_names]
    if absent:
        raise ValueError(f"sft: fields {absent} are in no record of {sft_cfg.path} (columns: {records.column_names}); "
                         f"set sft.prompt_field / sft.response_field")
    mixed = getattr(datasets, "Json", None)
    if mixed is not None and any(isinstance(records.features[f], mixed) for f in fields):
        records = list(_plain_json_records(files))  # see there: datasets' mixed-type columns lose "8" vs 8
    demos, skipped = [], Counter()
    for record in records:
        record = record if isinstance(record, dict) else {}
        record = {f: record.get(f) for f in fields}
        prompt, response = record[fields[0]], record[fields[1]]
        if prompt is None or response is None:
            skipped["missing field"] += 1
        elif not isinstance(prompt, str) or not isinstance(response, str):
            skipped["not text"] += 1
        elif not prompt.strip() or not response.strip():
            skipped["empty"] += 1
        else:
            demo = Demonstration(tuple(tokenizer.encode(prompt)), _with_eos(tokenizer.encode(response), tokenizer))
            if max_tokens is not None and len(demo.prompt) + len(demo.response) > max_tokens:
                skipped["too long"] += 1
                continue
            demos.append(demo)
    if skipped:
        log.warning("sft: skipped %d of %d records of %s: %s", sum(skipped.values()), len(records), sft_cfg.path,
                    dict(skipped))
    if not demos:
        raise ValueError(f"sft: no usable prompt/response record in {sft_cfg.path} (skipped: {dict(skipped)})")
    return demos, skipped


def _plain_json_records(files: list[str]) -> Iterator:
    """The records of JSON / JSON-lines files as the standard library parses them. ``datasets`` (5.x) stores a JSON
    field whose records mix types (text in most, a number or a list in a bad one) as JSON text and decodes every
    string that parses as JSON, so a response ``"8"`` or ``"true"`` would come back as a number or a boolean and
    be miscounted as not text; read with exact types instead (only for such files)."""
    for path in files:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            yield from (json.loads(line) for line in text.splitlines() if line.strip())
            continue
        yield from (data if isinstance(data, list) else [data])
