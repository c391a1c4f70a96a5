"""Stage `report`: ``report/report.md`` with the run's tables and PNG plots, readable without W&B (and logged to
W&B as an artifact when W&B is on).

With ``report.runs`` set it reports on those runs instead, aggregated (mean ± std over seeds, per-run values):
``rpt report run.name=seeds 'report.runs=[seed0,seed1,seed2]'`` after
``rpt pipeline --multirun run.seed=0,1,2 'run.name=seed${run.seed}'`` (see ``rpt/analysis/aggregate.py``).
"""

from __future__ import annotations

from rpt.analysis.aggregate import build_aggregate_report, resolve_runs
from rpt.analysis.report_md import build_report
from rpt.errors import Refusal
from rpt.run_memory import settings_that_differ


def run(ctx) -> dict:
    cfg = ctx.cfg
    if cfg.report.runs:
        names = resolve_runs(cfg.run.root, cfg.report.runs, exclude=cfg.run.name)
        differ = settings_that_differ(cfg.run.root, names)
        if differ and not cfg.report.allow_mixed:
            shown = "; ".join(f"{key}: " + ", ".join(f"{n}={v}" for n, v in values.items())
                              for key, values in list(differ.items())[:6])
            more = f" (and {len(differ) - 6} more keys)" if len(differ) > 6 else ""
            raise Refusal(f"report.runs were made with different settings, so their mean ± std mixes them: {shown}"
                          f"{more}. Aggregate runs made alike (seeds of one config), or set report.allow_mixed=true "
                          f"to put them side by side anyway")
        if not ctx.rt.is_main:
            return {"aggregated_runs": names}
        path = build_aggregate_report(cfg.run.root, names, ctx.rd.report, cfg.run.name, differ)
        summary = {"report": str(path), "aggregated_runs": names}
    else:
        ctx.rd.require("eval")
        if not ctx.rt.is_main:
            return {}
        path = build_report(cfg, ctx.rd)
        summary = {"report": str(path)}
    wandb_log = ctx.metrics()
    wandb_log.log_artifact(ctx.rd.report, f"report-{cfg.run.name}", "report")
    wandb_log.close()
    return summary
