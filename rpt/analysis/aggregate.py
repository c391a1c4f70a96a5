"""Aggregate several runs (seeds) into one report: every accuracy as mean ± std over runs, with the per-run values.

One seed's numbers move by several points (README), so comparisons are made over seeds. ``rpt report`` with
``report.runs`` set reads each listed run's ``eval/next_token.json`` and ``eval/downstream.json`` and writes
``<run.root>/<run.name>/report/report.md`` with, for every cell (model × mode × bucket, checkpoint × metric), the
mean, the sample standard deviation (ddof = 1; "–" for one run) and the number of runs, then the per-run values with
their n and 95% Wilson intervals. A run missing a cell (no ``cnt`` checkpoint, an empty bucket) is left out of that
cell and named in a note. A listed run without eval outputs is refused (ValueError), so a half-finished seed never
silently shrinks the average. Entries may be glob patterns over run names (``seed*``).

Comparisons between models (the headline included) are paired differences on the same positions with a Student-t
interval over seeds (``rpt.analysis.paired``): positions cluster by seed and by document, so intervals over pooled
positions would count them as independent trials; the pooled table is kept as a description only.

Three seeds, then one aggregate (quotes keep ``$`` and ``[]`` from the shell; Hydra resolves ``${run.seed}`` per
sweep job, so each seed gets its own run directory):

    rpt pipeline --multirun run.seed=0,1,2 'run.name=seed${run.seed}'   # runs/seed0, runs/seed1, runs/seed2
    rpt report run.name=seeds 'report.runs=[seed0,seed1,seed2]'        # runs/seeds/report/report.md
    rpt report run.name=seeds 'report.runs=[seed*]' force=true         # the same by pattern; force=true redoes it

The aggregate's own name must not be one of the runs (nor match a pattern: it is excluded from the matches).
"""

from __future__ import annotations

import fnmatch
import logging
import statistics
from pathlib import Path

from rpt.analysis.intervals import fmt_accuracy
from rpt.analysis.lm_eval_md import lm_eval_aggregate_section
from rpt.analysis.paired import BUCKETS, downstream_paired_table, paired_headline, paired_table
from rpt.analysis.run_comparison import comparison_curves, comparison_table
from rpt.rundir import read_json, write_text

log = logging.getLogger(__name__)

EVAL_FILES = ("next_token.json", "downstream.json")


def resolve_runs(root: str | Path, patterns: list[str], exclude: str) -> list[str]:
    """Run names from names and glob patterns (matched against directories under ``root``), in the order given,
    without duplicates and without ``exclude`` (the aggregate's own run)."""
    root = Path(root)
    names: list[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            found = sorted(p.name for p in root.iterdir() if p.is_dir() and fnmatch.fnmatchcase(p.name, pat)) \
                if root.is_dir() else []
            found = [f for f in found if f != exclude]
            if not found:
                raise ValueError(f"report.runs: pattern {pat!r} matches no run directory under {root}")
        elif pat == exclude:
            raise ValueError(f"report.runs lists {pat!r}, the aggregate's own run.name: give the aggregate "
                             f"another name (run.name=...), or its report would replace that run's")
        else:
            found = [pat]
        names += [f for f in found if f not in names]
    return names


def load_eval(root: str | Path, names: list[str]) -> dict[str, dict]:
    """``{run: {"next_token": ..., "downstream": ...}}``; ValueError naming every run that lacks eval outputs."""
    missing = {n: [f for f in EVAL_FILES if not (Path(root) / n / "eval" / f).is_file()] for n in names}
    missing = {n: files for n, files in missing.items() if files}
    if missing:
        detail = "; ".join(f"{n}: no eval/{', eval/'.join(files)}" for n, files in missing.items())
        raise ValueError(f"cannot aggregate runs without eval outputs under {root} ({detail}); run "
                         f"`rpt pipeline run.name=<run>` (or `rpt eval`) for them first")
    return {n: {"next_token": read_json(Path(root) / n / "eval" / "next_token.json"),
                "downstream": read_json(Path(root) / n / "eval" / "downstream.json")} for n in names}


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _union(keys_per_run) -> list:
    """Every key once, in first-seen order (a run's own list may repeat keys: each checkpoint has the metrics)."""
    return list(dict.fromkeys(k for keys in keys_per_run for k in keys))


def collect_cells(evals: dict[str, dict]) -> tuple[dict, dict]:
    """Per table, ``{row: {column: {run: (accuracy, n)}}}`` over the runs that have the cell."""
    nt: dict = {}
    for run, ev in evals.items():
        for model, modes in ev["next_token"]["results"].items():
            for mode, buckets in modes.items():
                for b in BUCKETS:
                    cell = buckets.get(b) or {}
                    if cell.get("accuracy") is not None:
                        nt.setdefault((model, mode), {}).setdefault(b, {})[run] = (cell["accuracy"], cell["n"])
    ds: dict = {}
    for run, ev in evals.items():
        for ckpt, res in ev["downstream"]["results"].items():
            for metric, value in res.items():
                if metric != "n" and value is not None:
                    ds.setdefault(ckpt, {}).setdefault(metric, {})[run] = (value, res["n"])
    return nt, ds


def fmt_mean(values: dict[str, tuple[float, int]]) -> str:
    if not values:
        return "–"
    mean, std = mean_std([v[0] for v in values.values()])
    spread = "–" if std is None else f"{100 * std:.1f}"
    return f"{100 * mean:.1f} ± {spread} ({len(values)} run{'s' if len(values) > 1 else ''})"


def table(cells: dict, row_names: list, columns: list, runs: list[str], row_label: list[str], col_label: str):
    """Aggregated table, per-run table (markdown) and notes naming the runs that lack a cell."""
    head = "| " + " | ".join(row_label) + " | " + " | ".join(columns) + " |"
    sep = "|" + "---|" * (len(row_label) + len(columns))
    agg, per_run, notes = [head, sep], [], []
    per_run += ["| " + " | ".join(row_label) + f" | {col_label} | " + " | ".join(f"`{r}`" for r in runs) + " |",
                "|" + "---|" * (len(row_label) + 1 + len(runs))]
    for row in row_names:
        label = list(row) if isinstance(row, tuple) else [row]
        by_col = cells.get(row, {})
        agg.append("| " + " | ".join(label) + " | " + " | ".join(fmt_mean(by_col.get(c, {})) for c in columns)
                   + " |")
        for c in columns:
            vals = by_col.get(c, {})
            lacking = [r for r in runs if r not in vals]
            if lacking:
                notes.append(f"{' / '.join(label)} / {c}: no value in {', '.join(f'`{r}`' for r in lacking)}")
            if vals:
                per_run.append("| " + " | ".join(label) + f" | {c} | "
                               + " | ".join(fmt_accuracy(*vals[r]) if r in vals else "–" for r in runs) + " |")
    return "\n".join(agg), "\n".join(per_run), notes


def pooled(values: dict[str, tuple[float, int]]) -> tuple[float, int] | None:
    """Accuracy pooled over runs (every run's items counted once: Σ accuracy·n / Σ n) and the pooled n."""
    n = sum(v[1] for v in values.values())
    return (sum(a * k for a, k in values.values()) / n, n) if n else None


def pooled_table(nt: dict, rows: list) -> str:
    """Next-token accuracy pooled over the runs, with the Wilson interval of the pooled n: descriptive only, since
    that interval counts clustered positions as independent trials (comparisons: ``paired``)."""
    lines = ["| model | mode | " + " | ".join(BUCKETS) + " |", "|---|---|" + "---|" * len(BUCKETS)]
    for row in rows:
        cells = [pooled(nt.get(row, {}).get(b, {})) for b in BUCKETS]
        lines.append(f"| {row[0]} | {row[1]} | " + " | ".join(fmt_accuracy(*c) if c else "–" for c in cells) + " |")
    return "\n".join(lines)


def build_aggregate_report(root: str | Path, names: list[str], out_dir: Path, title: str,
                           differ: dict[str, dict] | None = None) -> Path:
    """Write ``out_dir/report.md`` aggregating the runs ``names`` under ``root``; returns its path. ``differ``: the
    settings the runs differ in (``run_memory.settings_that_differ``), named at the top."""
    if not names:
        raise ValueError("report.runs resolved to no run")
    evals = load_eval(root, names)
    nt, ds = collect_cells(evals)
    nt_files = {n: ev["next_token"] for n, ev in evals.items()}
    nt_rows = _union([[(m, mode) for m, modes in ev["next_token"]["results"].items() for mode in modes]
                      for ev in evals.values()])
    nt_agg, nt_runs, nt_notes = table(nt, nt_rows, list(BUCKETS), names, ["model", "mode"], "bucket")
    ds_rows = _union([list(ev["downstream"]["results"]) for ev in evals.values()])
    ds_cols = _union([[k for res in ev["downstream"]["results"].values() for k in res if k != "n"]
                      for ev in evals.values()])
    ds_agg, ds_runs, ds_notes = table(ds, ds_rows, ds_cols, names, ["checkpoint"], "metric")
    thresholds = {n: tuple(ev["next_token"]["thresholds"]) for n, ev in evals.items()}
    tasks = {n: ev["downstream"]["task"] for n, ev in evals.items()}
    warn = []
    if len(set(thresholds.values())) > 1:
        warn.append(f"**The runs use different difficulty thresholds** ({thresholds}): bucket means mix them.")
    if len(set(tasks.values())) > 1:
        warn.append(f"**The runs evaluate different downstream tasks** ({tasks}).")
    if differ:
        warn.append("**The runs differ in settings beyond the seed** (report.allow_mixed), so means mix them: "
                    + "; ".join(f"`{key}` " + ", ".join(f"{n}={v}" for n, v in values.items())
                                for key, values in differ.items()) + ".")
    notes = nt_notes + ds_notes
    note_md = ("Cells some runs lack (left out of that cell's mean):\n" + "\n".join(f"- {n}" for n in notes)
               if notes else "Every run has every cell.")
    positions = ", ".join(f"`{n}` {ev['next_token']['positions']}" for n, ev in evals.items())
    text = f"""# Aggregate of {len(names)} runs: `{title}`

Runs (under `{root}`): {', '.join(f'`{n}`' for n in names)}.
Each cell: mean ± sample standard deviation (ddof = 1, "–" with one run) over the runs that have it, in percent,
and how many runs that is; the per-run tables give each run's value with its 95% Wilson interval and n.
{' '.join(warn)}

## One row per run (algorithms side by side, e.g. `experiment=remedies`)
Next-token: held-out accuracy (%) of the `rpt` checkpoint, greedy reasoning; downstream: pass@1 (%) of `rl_rpt`
(or of `rpt` in a run without `rl`, as named); entropy: the RPT stage's mean policy entropy over its last quarter
of steps; diversity of that checkpoint's downstream samples (distinct answers per question, pairwise chrF
similarity).

{comparison_table(root, names)}

{comparison_curves(root, names, out_dir)}

## Next-token accuracy on held-out high-entropy positions (%)
Thresholds (easy, medium, hard): {next(iter(thresholds.values()))}; held-out positions per run: {positions}.

{paired_headline(nt_files)}

### Paired differences, seed-level intervals
Within a run both models answered the same positions, so each run gives one paired difference (mean over the
bucket's positions of score a − score b, in points); the seeds are the independent replicates, so the 95% Student-t
interval over them (S − 1 degrees of freedom) is what decides a comparison. The document bootstrap (each run's
documents resampled with replacement, a document's positions together; 2000 draws, seeded) shows only how much the
particular documents move the difference within these seeds.

{paired_table(nt_files, BUCKETS)}

### Pooled accuracy (descriptive)
Descriptive; positions cluster by seed and document: use the paired section for comparisons. Each run's positions
are counted once, and the 95% Wilson interval on the pooled n treats them as independent trials, so it is too narrow:

{pooled_table(nt, nt_rows)}

Mean ± std over the runs:

{nt_agg}

Per run:

{nt_runs}

## Downstream task accuracy (%), `{next(iter(tasks.values()))}`

Paired over the runs (each run's checkpoints answer the same questions; 95% t-interval over seeds):

{downstream_paired_table({n: ev["downstream"] for n, ev in evals.items()})}

Mean ± std over the runs:

{ds_agg}

Per run:

{ds_runs}

{lm_eval_aggregate_section(root, names)}
## Missing cells
{note_md}
"""
    path = Path(out_dir) / "report.md"
    write_text(path, text)
    log.info("aggregate report over %d runs: %s", len(names), path)
    return path
