"""Stage `report`: ``report/report.md`` with the run's tables and PNG plots, readable without W&B."""

from __future__ import annotations

from rpt.analysis.report_md import build_report


def run(ctx) -> dict:
    ctx.rd.require("eval")
    if ctx.rt.is_main:
        path = build_report(ctx.cfg, ctx.rd)
        return {"report": str(path)}
    return {}
