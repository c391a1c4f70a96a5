"""RPT's scaling result (arXiv 2506.08007, Fig. 5): held-out next-token accuracy per difficulty against RPT
training compute, fitted per bucket by P(C) = A / C^α + P* (P* the accuracy the curve approaches, A < 0 when
accuracy rises with compute).

Compute is counted in tokens: the cumulative prompt + response tokens of the sampled rollouts (``rollout_tokens``,
logged every RL step), which the old-policy pass, the update's forward and backward all process again, so FLOPs
are proportional to it at a fixed model size. The accuracy points are the RPT stage's validations
(``val/accuracy_{easy,medium,hard}``, greedy on a fixed held-out sample).

The fit is least squares: for a fixed α the model is linear in (A, P*), solved in closed form, and α is the best
of a log-spaced grid (then refined on a finer grid around it). Written here because numpy has no nonlinear
least squares and scipy is not a dependency; a three-parameter curve needs no more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rpt.analysis import fits

BUCKETS = ("easy", "medium", "hard")
ALPHA_RANGE = (1e-3, 10.0)  # the exponents searched; a best fit at either end is not determined by the data


@dataclass
class PowerLawFit:
    A: float
    alpha: float
    p_star: float
    r2: float
    n: int

    def predict(self, compute) -> np.ndarray:
        return self.A * np.asarray(compute, dtype=float) ** -self.alpha + self.p_star

    @property
    def degenerate(self) -> str | None:
        """Why the curve is not a power law the data determine, or None: α at the end of its search range (the
        curve is then a step or a line, whatever the points), or accuracy falling with compute (A > 0)."""
        low, high = ALPHA_RANGE
        if not low * 1.5 < self.alpha < high / 1.5:
            return f"α = {self.alpha:.3g} at the end of its search range [{low:g}, {high:g}]"
        if self.A > 0:
            return "accuracy falls with compute (A > 0)"
        return None

    @property
    def informative(self) -> bool:
        return fits.informative(self.r2, self.n, self.degenerate)

    def as_dict(self) -> dict:
        return {**asdict(self), "informative": self.informative, "degenerate": self.degenerate}


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(A, P*, sum of squared residuals) of y = A·x + P*."""
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(coef[0]), float(coef[1]), float(resid @ resid)


def fit_power_law(compute, accuracy) -> PowerLawFit:
    c = np.asarray(compute, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    ok = np.isfinite(c) & np.isfinite(y) & (c > 0)
    c, y = c[ok], y[ok]
    if len(c) < 3:
        raise ValueError(f"need at least 3 points with compute > 0 to fit, got {len(c)}")
    if np.ptp(c) == 0:
        raise ValueError("every point has the same compute")
    scale = c / c.min()  # α is searched on compute relative to the first point, so the grid is size-independent

    def best(alphas):
        return min((_linear_fit(scale ** -a, y) + (a,) for a in alphas), key=lambda t: t[2])

    low, high = ALPHA_RANGE
    A, p_star, sse, alpha = best(np.logspace(np.log10(low), np.log10(high), 200))
    A, p_star, sse, alpha = best(np.linspace(max(low, alpha * 0.9), min(high, alpha * 1.1), 41))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    # back to absolute compute: A·(C/C0)^-α = (A·C0^α)·C^-α
    return PowerLawFit(A=A * float(c.min()) ** alpha, alpha=float(alpha), p_star=p_star,
                       r2=1.0 - sse / ss_tot if ss_tot else 0.0, n=int(len(y)))


def scaling_points(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Per bucket: (cumulative rollout tokens at each validation, accuracy), from one RL stage's metric rows."""
    out: dict[str, tuple[list[float], list[float]]] = {b: ([], []) for b in BUCKETS}
    tokens = 0.0
    for row in sorted(rows, key=lambda r: r["step"]):
        tokens += row.get("rollout_tokens") or 0.0
        for b in BUCKETS:
            acc = row.get(f"val/accuracy_{b}")
            if acc is not None and tokens > 0:
                out[b][0].append(tokens)
                out[b][1].append(acc)
    return {b: pts for b, pts in out.items() if pts[0]}


def scaling_fits(rows: list[dict]) -> dict[str, dict]:
    """Per bucket: the points and the fit (a ``PowerLawFit``, or None and why there is none)."""
    result = {}
    for bucket, (compute, acc) in scaling_points(rows).items():
        entry: dict = {"compute_tokens": compute, "accuracy": acc}
        try:
            entry["fit"] = fit_power_law(compute, acc)
        except ValueError as err:
            entry["fit"], entry["not_fitted"] = None, str(err)
        result[bucket] = entry
    return result


def scaling_section(rows: list[dict], stage: str, report_dir) -> tuple[str, list[str]]:
    """Markdown (one row per bucket: the fit, its R² and n, whether it says anything) and the plot's name."""
    from rpt.analysis import plots
    from rpt.rundir import write_json

    result = scaling_fits(rows)
    if not result:
        return "", []
    write_json(report_dir / f"{stage}_scaling.json",
               {b: {**e, "fit": e["fit"] and e["fit"].as_dict()} for b, e in result.items()})
    lines = [f"Scaling with RPT compute (arXiv 2506.08007 Fig. 5): held-out greedy next-token accuracy per bucket "
             f"against cumulative rollout tokens, fitted by P(C) = A / C^α + P* (least squares; "
             f"`{stage}_scaling.json`).", "", "| bucket | points | A | α | P* | R² | |",
             "|---|---|---|---|---|---|---|"]
    for bucket, entry in result.items():
        fit = entry["fit"]
        if fit is None:
            lines.append(f"| {bucket} | {len(entry['accuracy'])} | – | – | – | – | not fitted: {entry['not_fitted']} |")
            continue
        said = fits.verdict(fit.r2, fit.n, fit.degenerate).strip() or "informative"
        lines.append(f"| {bucket} | {fit.n} | {fit.A:.3g} | {fit.alpha:.3f} | {100 * fit.p_star:.1f}% | "
                     f"{fit.r2:.3f} | {said} |")
    fitted = {b: e["fit"] for b, e in result.items() if e["fit"] is not None}
    name = f"{stage}_scaling.png"
    plots.compute_scaling({b: (e["compute_tokens"], e["accuracy"]) for b, e in result.items()}, fitted,
                          report_dir / name, f"{stage}: accuracy vs compute, P(C) = A / C^α + P*")
    return "\n".join(lines), [name]


def full_test_section(scaling: dict, report_dir) -> str:
    """The curve `eval` measured on the whole test split at the kept `rpt` steps (``eval/scaling.json``): each
    point with its 95% Wilson interval over positions, each bucket's fit and whether it says anything."""
    from rpt.analysis import plots
    from rpt.analysis.intervals import accuracy_interval, fmt_accuracy

    buckets = scaling["buckets"]
    lines = [f"Scaling with RPT compute on the whole test split ({scaling['positions']} positions, greedy reasoning "
             f"first) at the kept `rpt` steps {scaling['steps']}, fitted per bucket by P(C) = A / C^α + P* "
             "(`eval/scaling.json`). Intervals are over positions (they cluster by document: read them as a lower "
             "bound on the uncertainty).", "", "| step | rollout tokens | " + " | ".join(BUCKETS) + " |",
             "|---|---|" + "---|" * len(BUCKETS)]
    for k, (step, compute) in enumerate(zip(scaling["steps"], scaling["compute_tokens"], strict=True)):
        cells = [fmt_accuracy(buckets[b]["accuracy"][k], buckets[b]["n"][k]) if k < len(buckets[b]["accuracy"])
                 else "–" for b in BUCKETS]
        lines.append(f"| {step} | {compute:.3g} | " + " | ".join(cells) + " |")
    lines += ["", "| bucket | points | A | α | P* | R² | |", "|---|---|---|---|---|---|---|"]
    fitted = {}
    for b in BUCKETS:
        fit = buckets[b]["fit"]
        if fit is None:
            lines.append(f"| {b} | {len(buckets[b]['accuracy'])} | – | – | – | – | not fitted: "
                         f"{buckets[b]['not_fitted']} |")
            continue
        fitted[b] = PowerLawFit(**{k: fit[k] for k in ("A", "alpha", "p_star", "r2", "n")})
        said = fits.verdict(fit["r2"], fit["n"], fit["degenerate"]).strip() or "informative"
        lines.append(f"| {b} | {fit['n']} | {fit['A']:.3g} | {fit['alpha']:.3f} | {100 * fit['p_star']:.1f}% | "
                     f"{fit['r2']:.3f} | {said} |")
    points = {b: (buckets[b]["compute_tokens"], buckets[b]["accuracy"]) for b in BUCKETS if buckets[b]["accuracy"]}
    intervals = {b: [accuracy_interval(a, n) for a, n in zip(buckets[b]["accuracy"], buckets[b]["n"], strict=True)]
                 for b in points}
    plots.compute_scaling(points, fitted, report_dir / "rpt_scaling_test.png",
                          "rpt: test accuracy vs compute, P(C) = A / C^α + P*", intervals)
    return "\n".join(lines) + "\n\n![rpt_scaling_test](rpt_scaling_test.png)\n"
