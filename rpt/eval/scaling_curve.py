"""The compute-scaling curve from full test evaluations: RPT's Fig. 5 (accuracy per difficulty against RPT compute,
fitted by P(C) = A / C^α + P*) measured on the whole test split at log-spaced steps.

The validation points logged along training (``val/*``: ``rpt.eval_size`` positions, about 40 of them hard in the
demo) were too noisy for a power law. Here every checkpoint the `rpt` stage kept (``rpt.keep_steps``, e.g. 5, 10,
20, 40, 80) is scored greedy, reasoning first, on the same test positions `eval` scores the final checkpoint on. A
step's compute is the cumulative rollout tokens (prompt + response of every sampled sequence) up to it, from the
stage's metric rows, as in ``rpt.analysis.scaling``; each bucket's fit is judged there (``fits``: n ≥ 8, R² ≥ 0.5,
an exponent inside its search range), so a curve through too few or too scattered points says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rpt.analysis.scaling import BUCKETS, fit_power_law
from rpt.checkpoint import latest_step_dir
from rpt.eval.accuracy import by_bucket, sample_completions
from rpt.metrics import read_metrics
from rpt.model.loading import load_eval_model

log = logging.getLogger(__name__)


def kept_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint of a stage, in step order."""
    found = [(int(p.name.removeprefix("step_")), p) for p in Path(stage_dir).glob("step_*")
             if (p / "state.pt").exists()]
    return sorted(found)


def compute_at(rows: list[dict], step: int) -> float:
    """Cumulative rollout tokens of the stage's steps 1..``step``."""
    return float(sum(r.get("rollout_tokens") or 0.0 for r in rows if r["step"] <= step))


def fit_buckets(compute: list[float], points: list[dict]) -> dict[str, dict]:
    """Per bucket: the points and the fit (``PowerLawFit.as_dict``) or why there is none."""
    out = {}
    for b in BUCKETS:
        xs = [c for c, p in zip(compute, points, strict=True) if p[b]["accuracy"] is not None]
        ys = [p[b]["accuracy"] for p in points if p[b]["accuracy"] is not None]
        entry: dict = {"compute_tokens": xs, "accuracy": ys, "n": [p[b]["n"] for p in points
                                                                    if p[b]["accuracy"] is not None]}
        try:
            entry["fit"] = fit_power_law(xs, ys).as_dict()
        except ValueError as err:
            entry["fit"], entry["not_fitted"] = None, str(err)
        out[b] = entry
    return out


def scaling_curve(cfg, rt, rd, task, items, greedy, vocab_size: int, final_scores: list[float] | None) -> dict:
    """Score the `rpt` checkpoints of ``rpt.keep_steps`` and the final one on ``items`` (greedy reasoning first) and
    fit the curve per bucket;
    ``final_scores``: the latest checkpoint's scores, already measured by `eval` (not scored again)."""
    rows = read_metrics(rd.metrics, "rpt")
    latest = latest_step_dir(rd.checkpoints("rpt"))
    steps, compute, points = [], [], []
    for step, path in kept_checkpoints(rd.checkpoints("rpt")):
        if step not in cfg.rpt.keep_steps and path != latest:  # a rotating checkpoint that happens to be there
            continue
        if latest is not None and path == latest and final_scores is not None:
            scores = final_scores
        else:
            model = load_eval_model(cfg.model, rt, rd, str(path), vocab_size)
            rewards, _ = sample_completions(model, task, items, 1, greedy, cfg.run.seed, rt.device)
            scores = [r[0] for r in rewards]
        steps.append(step)
        compute.append(compute_at(rows, step))
        points.append(by_bucket(items, scores, cfg.select.difficulty_thresholds))
        log.info("eval scaling: rpt step %d (%.3g rollout tokens): %s", step, compute[-1],
                 {b: points[-1][b]["accuracy"] for b in BUCKETS})
    return {"stage": "rpt", "positions": len(items), "steps": steps, "compute_tokens": compute,
            "buckets": fit_buckets(compute, points)}
