"""Stage `report`: ``report/report.md`` with the run's tables and PNG plots, readable without W&B.

With ``report.runs`` set it reports on those runs instead, aggregated (mean ± std over seeds, per-run values):
``rpt report run.name=seeds 'report.runs=[seed0,seed1,seed2]'`` after
``rpt pipeline --multirun run.seed=0,1,2 'run.name=seed${run.seed}'`` (see ``rpt/analysis/aggregate.py``).
"""

from __future__ import annotations

from rpt.analysis.aggregate import build_aggregate_report, resolve_runs
from rpt.analysis.report_md import build_report


def run(ctx) -> dict:
    cfg = ctx.cfg
    if cfg.report.runs:
        names = resolve_runs(cfg.run.root, cfg.report.runs, exclude=cfg.run.name)
        if ctx.rt.is_main:
            path = build_aggregate_report(cfg.run.root, names, ctx.rd.report, cfg.run.name)
            return {"report": str(path), "aggregated_runs": names}
        return {"aggregated_runs": names}
    ctx.rd.require("eval")
    if ctx.rt.is_main:
        path = build_report(cfg, ctx.rd)
        return {"report": str(path)}
    return {}
