"""One row per run: the algorithm comparison table of an aggregate report (``experiment=remedies``: one run per
algorithm on the same budget, ``rpt report 'report.runs=[remedies_*]'``).

The seed aggregate (``rpt.analysis.aggregate``) averages its runs as repeats of one recipe; when the runs are
different algorithms that mean is not what one wants to read, so this table keeps every run apart. Per run:
held-out next-token accuracy of the RPT checkpoint by difficulty (greedy reasoning), downstream accuracy of the
RL-after-RPT checkpoint (pass@1 over its samples, greedy when no samples), the RPT stage's mean policy entropy over
its last quarter of steps (``metrics.jsonl``), and the diversity of the downstream samples (distinct answers per
question and mean pairwise chrF similarity, ``eval.downstream_samples``). ``comparison_curves`` draws the RPT
stage's entropy and held-out validation accuracy per step, one line per run.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from rpt.analysis import plots
from rpt.metrics import read_metrics
from rpt.rundir import read_json

BUCKETS = ("easy", "medium", "hard")


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def stage_entropy(run_dir: Path, stage: str = "rpt") -> float | None:
    """Mean ``entropy`` of ``stage``'s last quarter of logged steps (None without metrics)."""
    values = [r["entropy"] for r in read_metrics(run_dir / "metrics.jsonl", stage) if r.get("entropy") is not None]
    tail = values[-max(1, len(values) // 4):]
    return statistics.fmean(tail) if tail else None


def run_row(run_dir: Path, model: str = "rpt", downstream: tuple[str, ...] = ("rl_rpt", "rpt")) -> list[str]:
    """The run's cells; downstream numbers are of the first of ``downstream`` the run evaluated (RL after RPT, or
    the RPT checkpoint itself when the run had no `rl` stage), named in the row."""
    nt = read_json(run_dir / "eval" / "next_token.json")["results"].get(model, {}).get("reasoning_greedy", {})
    ds_all = read_json(run_dir / "eval" / "downstream.json")
    checkpoint = next((c for c in downstream if c in ds_all["results"]), downstream[0])
    ds = ds_all["results"].get(checkpoint, {})
    accuracy = ds.get("pass@1", ds.get("greedy"))
    div = (ds_all.get("diversity") or {}).get(checkpoint, {})
    return ([f"`{run_dir.name}`"] + [_pct((nt.get(b) or {}).get("accuracy")) for b in BUCKETS]
            + [f"{_pct(accuracy)} (`{checkpoint}`)", _num(stage_entropy(run_dir)), _num(div.get("distinct_answers")),
               _num(div.get("pairwise_similarity"))])


def comparison_table(root: str | Path, names: list[str]) -> str:
    """The markdown table, one row per run under ``root``."""
    head = ("| run | next-token easy | medium | hard | downstream pass@1 | RPT entropy (last quarter) "
            "| distinct answers | pairwise similarity |")
    lines = [head, "|" + "---|" * 8]
    lines += ["| " + " | ".join(run_row(Path(root) / name)) + " |" for name in names]
    return "\n".join(lines)


def comparison_curves(root: str | Path, names: list[str], out_dir: Path, stage: str = "rpt") -> str:
    """Markdown for two plots written to ``out_dir``: ``stage``'s entropy and held-out accuracy per step, one line
    per run ("" when no run logged the stage)."""
    rows = {name: read_metrics(Path(root) / name / "metrics.jsonl", stage) for name in names}

    def lines(key):
        out = {}
        for name, rs in rows.items():
            points = [(r["step"], r[key]) for r in rs if r.get(key) is not None]
            if points:
                out[name] = ([p[0] for p in points], [p[1] for p in points])
        return out

    md = []
    for key, label, image in (("entropy", "policy entropy (nats)", f"{stage}_entropy_by_run.png"),
                              ("val/accuracy", "held-out accuracy", f"{stage}_val_accuracy_by_run.png")):
        series = lines(key)
        if series:
            plots.curves(series, label, f"{stage}: {label} per step, one line per run", Path(out_dir) / image)
            md.append(f"![{stage} {key} by run]({image})")
    return "\n\n".join(md)
