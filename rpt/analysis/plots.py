"""PNG plots for the report (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rpt.analysis.fits import informative  # noqa: E402
from rpt.rundir import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def entropy_histogram(counts, edges, thresholds, path: Path) -> None:
    """Bars of a histogram counted elsewhere (`select` counts it shard by shard: ``np.histogram``'s counts, edges)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(edges[:-1], bins=edges, weights=counts, color="#4878a8")
    for thr, name in zip(thresholds, ["easy", "medium", "hard"], strict=True):
        ax.axvline(thr, color="#c44", ls="--", lw=1)
        ax.text(thr, ax.get_ylim()[1] * 0.92, f" {name}>{thr}", fontsize=8, color="#c44")
    ax.set_xlabel("proxy top-16 next-token entropy (nats)")
    ax.set_ylabel("positions")
    ax.set_title("Entropy of the RPT split under the proxy")
    _save(fig, path)


def curves(series: dict[str, tuple[list, list]], ylabel: str, title: str, path: Path) -> None:
    """One line per name: ``series[name] = (steps, values)``."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def grouped_bars(groups: list[str], bars: dict[str, list[float]], ylabel: str, title: str, path: Path,
                 intervals: dict[str, list[tuple[float, float] | None]] | None = None) -> None:
    """Bars per group; ``intervals[name][i]`` = (low, high) draws an error bar (None: none)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(bars.items()):
        yerr = None
        if intervals and name in intervals:
            ci = [c if c is not None else (v, v) for v, c in zip(values, intervals[name], strict=True)]
            yerr = np.array([[max(0.0, v - lo) for v, (lo, _) in zip(values, ci, strict=True)],
                             [max(0.0, hi - v) for v, (_, hi) in zip(values, ci, strict=True)]])
        ax.bar(x + i * width, values, width, label=name, yerr=yerr, capsize=2 if yerr is not None else 0)
    ax.set_xticks(x + width * (len(bars) - 1) / 2, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def entropy_law(entropy, reward, fit, path: Path, title: str, ylabel: str = "reward R") -> None:
    """Scatter of (entropy, reward) per step with the fitted R = -a exp(H) + b."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    sc = ax.scatter(entropy, reward, c=np.arange(len(entropy)), cmap="viridis", s=14, label="steps")
    grid = np.linspace(0.0, max(entropy) * 1.05, 100)
    label = f"R = -{fit.a:.3f}·exp(H) + {fit.b:.3f}  (R²={fit.r2:.2f}, n={fit.n}, ceiling {fit.ceiling:.3f})"
    if informative(fit.r2, fit.n):
        ax.plot(grid, fit.predict(grid), color="#c44", label=label)
    else:
        ax.plot(grid, fit.predict(grid), color="#999", ls=":", label=f"not informative: {label}")
    fig.colorbar(sc, ax=ax, label="step")
    ax.set_xlabel("policy entropy H (nats)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path)


def reward_and_validation(reward: dict[str, tuple[list, list]], val: dict[str, tuple[list, list]],
                          bands: dict[str, tuple[list, list]], title: str, path: Path) -> None:
    """Two panels over one step axis: training reward lines (top), held-out validation accuracy (bottom) with
    ``bands[name] = (low, high)`` shaded per validation point."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    for name, (x, y) in reward.items():
        top.plot(x, y, label=name, lw=1.5)
    top.set_ylabel("mean reward")
    top.set_title(title)
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    for name, (x, y) in val.items():
        (line,) = bottom.plot(x, y, marker="o", ms=3, lw=1.5 if name in bands else 1.0,
                              ls="-" if name in bands else "--", label=name)
        if name in bands:
            bottom.fill_between(x, *bands[name], color=line.get_color(), alpha=0.2, lw=0)
    bottom.set_ylabel("validation accuracy (greedy)")
    bottom.set_xlabel("step")
    bottom.set_ylim(-0.02, 1.02)
    bottom.legend(fontsize=7)
    bottom.grid(alpha=0.3)
    _save(fig, path)


def concentration_curves(curves: dict[str, list[list[float]]], top: float, path: Path) -> None:
    """Lorenz-style curves, one per name: cumulative share of the policy's change against the share of tokens
    taken by initial entropy, highest first (``curves[name]`` = [[token share, change share], ...]), with the
    uniform diagonal and the ``top`` cut marked."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], color="#888", ls="--", lw=1, label="uniform (change independent of entropy)")
    ax.axvline(top, color="#c44", ls=":", lw=1)
    for name, points in curves.items():
        x, y = [p[0] for p in points], [p[1] for p in points]
        ax.plot(x, y, lw=1.5, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("share of response tokens, highest initial entropy first")
    ax.set_ylabel("share of the policy's change (KL)")
    ax.set_title("Where RL's effect lands")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def compute_scaling(points: dict[str, tuple[list, list]], fitted: dict, path: Path, title: str,
                    intervals: dict[str, list] | None = None) -> None:
    """Accuracy per bucket against cumulative compute (log x), with each bucket's P(C) = A / C^α + P* where
    fitted (dotted and marked when not informative); ``intervals``: per bucket, each point's (low, high)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (bucket, (compute, acc)) in enumerate(points.items()):
        color = f"C{i}"
        ax.scatter(compute, acc, color=color, s=16, label=bucket)
        if intervals and intervals.get(bucket):
            low, high = np.array(intervals[bucket], dtype=float).T
            ax.errorbar(compute, acc, yerr=[np.array(acc) - low, high - np.array(acc)], fmt="none", color=color,
                        alpha=0.5, capsize=2)
        fit = fitted.get(bucket)
        if fit is not None:
            grid = np.geomspace(min(compute), max(compute), 100)
            ok = fit.informative
            ax.plot(grid, fit.predict(grid), color=color, ls="-" if ok else ":",
                    label=f"{bucket}: α={fit.alpha:.2f}, P*={fit.p_star:.2f}, R²={fit.r2:.2f}"
                          + ("" if ok else " (not informative)"))
    ax.set_xscale("log")
    ax.set_xlabel("RPT training compute (cumulative rollout tokens)")
    ax.set_ylabel("held-out next-token accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
