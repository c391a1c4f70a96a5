"""The lm-evaluation-harness benchmarks in the report: one row per checkpoint, one column per task
(``eval/lm_eval.json``, stage ``lm_eval``), and over seeds the mean with its seed-level interval per cell.

A cell is the task's headline metric (the first lm-eval reports: ``acc`` of a multiple-choice task, ``exact_match``
after the task's filter of a generative one) with lm-eval's standard error, as lm-eval prints it (a fraction, not a
percentage). Over seeds, as for every comparison in ``paired``, the seeds are the replicates: each cell gives the mean
over the runs that have it and the 95% Student-t interval over them (S − 1 degrees of freedom).
"""

from __future__ import annotations

from pathlib import Path

from rpt.analysis.paired import seed_interval
from rpt.rundir import read_json

FILE = "lm_eval.json"


def read_results(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "eval" / FILE
    return read_json(path) if path.exists() else None


def headline(row: dict) -> tuple[str, dict] | None:
    """A task's first metric and its value/stderr, or None when lm-eval reported none."""
    return next(iter(row["metrics"].items()), None) if row and row.get("metrics") else None


def metric_label(key: str) -> str:
    """``acc,none`` → ``acc``; ``exact_match,letter`` → ``exact_match, letter`` (the filter it was read through)."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric}, {filt}"


def fmt_cell(row: dict | None) -> str:
    found = headline(row)
    if found is None or found[1]["value"] is None:
        return "–"
    value, stderr = found[1]["value"], found[1]["stderr"]
    spread = f" ± {stderr:.4f}" if stderr is not None else ""
    return f"{value:.4f}{spread} (n={row['n']})"


def _columns(tables: list[dict]) -> list[str]:
    return list(dict.fromkeys(t for data in tables for t in data["tasks"]))


def _column_heads(tables: list[dict], tasks: list[str]) -> list[str]:
    heads = []
    for task in tasks:
        keys = [h[0] for data in tables for row in data["results"].values() if (h := headline(row.get(task)))]
        heads.append(f"{task} ({metric_label(keys[0])})" if keys else task)
    return heads


def results_table(data: dict) -> str:
    """Markdown: each checkpoint a row, each task a column, ``value ± stderr (n=items)``."""
    tasks = list(data["tasks"])
    lines = ["| checkpoint | " + " | ".join(_column_heads([data], tasks)) + " |", "|---|" + "---|" * len(tasks)]
    for label, rows in data["results"].items():
        lines.append(f"| {label} | " + " | ".join(fmt_cell(rows.get(t)) for t in tasks) + " |")
    return "\n".join(lines)


def settings_line(data: dict) -> str:
    s = data["settings"]
    chat = "through the tokenizer's chat template" if s["apply_chat_template"] else "as plain text"
    think = f"the answer read after the last `{s['think_end_token']}`" if s["think_end_token"] else \
        "the whole response read as the answer"
    limit = f"; at most {s['limit']} items per task (a quick look, not a result)" if s["limit"] else ""
    return (f"lm-evaluation-harness {data['lm_eval_version']}, model `{s['model']}` on each checkpoint's HF export, "
            f"{s['num_fewshot']}-shot, prompts {chat}, {think}, generative tasks with up to {s['max_gen_toks']} new "
            f"tokens{limit}.")


def lm_eval_section(run_dir: Path) -> str:
    """The report's section, or "" when the run has no lm-eval results."""
    data = read_results(run_dir)
    if data is None:
        return ""
    return f"""## Benchmarks (lm-evaluation-harness)
{settings_line(data)} Cells: the task's first metric ± lm-eval's standard error (n items); per-item outputs in
`eval/lm_eval_samples/`.

{results_table(data)}
"""


def aggregate_cells(per_run: dict[str, dict]) -> dict[tuple[str, str], dict[str, float]]:
    """``{(checkpoint, task): {run: headline value}}`` over the runs that have the cell."""
    cells: dict = {}
    for run, data in per_run.items():
        for label, rows in data["results"].items():
            for task, row in rows.items():
                found = headline(row)
                if found is not None and found[1]["value"] is not None:
                    cells.setdefault((label, task), {})[run] = found[1]["value"]
    return cells


def fmt_seed_cell(values: dict[str, float]) -> str:
    if not values:
        return "–"
    mean, ci = seed_interval(list(values.values()))
    interval = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None else ""
    return f"{mean:.4f}{interval} ({len(values)} run{'s' if len(values) > 1 else ''})"


def lm_eval_aggregate_section(root: str | Path, names: list[str]) -> str:
    """The aggregate report's section over the runs ``names`` (those with lm-eval results), or "" when none has
    them: per cell the mean over runs and the 95% t-interval over seeds, then each run's value."""
    per_run = {n: d for n in names if (d := read_results(Path(root) / n)) is not None}
    if not per_run:
        return ""
    tables = list(per_run.values())
    tasks = _columns(tables)
    rows = list(dict.fromkeys(label for data in tables for label in data["results"]))
    cells = aggregate_cells(per_run)
    lines = ["| checkpoint | " + " | ".join(_column_heads(tables, tasks)) + " |", "|---|" + "---|" * len(tasks)]
    lines += [f"| {label} | " + " | ".join(fmt_seed_cell(cells.get((label, t), {})) for t in tasks) + " |"
              for label in rows]
    per_run_lines = ["| checkpoint | task | " + " | ".join(f"`{n}`" for n in per_run) + " |",
                     "|---|---|" + "---|" * len(per_run)]
    per_run_lines += [f"| {label} | {t} | " + " | ".join(f"{v[n]:.4f}" if n in v else "–" for n in per_run) + " |"
                      for label in rows for t in tasks if (v := cells.get((label, t)))]
    lacking = [n for n in names if n not in per_run]
    note = f"\nNo lm-eval results in {', '.join(f'`{n}`' for n in lacking)}.\n" if lacking else ""
    return f"""## Benchmarks (lm-evaluation-harness), over runs
Each cell: the mean of the task's first metric over the runs that have it, with the 95% Student-t interval over
them in brackets (the seeds are the replicates; one run has none), and how many runs that is.
{note}
{chr(10).join(lines)}

Per run:

{chr(10).join(per_run_lines)}
"""
