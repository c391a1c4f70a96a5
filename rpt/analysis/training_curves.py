"""Report sections built from ``metrics.jsonl``: training curves, the entropy-law fit, planning vs execution
entropy and forking-token statistics, and validation accuracy where the trainer logged it (``validation.py``), for
every RL stage of the run."""

from __future__ import annotations

from rpt.analysis import plots
from rpt.analysis.entropy_law import fit_and_forecast, fit_entropy_law
from rpt.analysis.fits import verdict
from rpt.analysis.scaling import scaling_section
from rpt.analysis.validation import plot_reward_and_validation, val_rows, validation_text
from rpt.metrics import read_metrics


def series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def moving_average(points, width: int):
    """Trailing mean over ``width`` steps (fewer at the start), to show the trend through per-step noise."""
    steps, values = points
    out = [sum(values[max(0, i - width + 1):i + 1]) / (i + 1 - max(0, i - width + 1)) for i in range(len(values))]
    return steps, out


def rl_stage_section(rd, stage: str, law_fit_fraction: float) -> tuple[str, list[str]]:
    """Markdown and image names for one RL stage (``rpt`` or ``rl_<source>``)."""
    rows = read_metrics(rd.metrics, stage)
    if not rows:
        return "", []
    images = []
    reward = series(rows, "reward_mean")
    reward_lines = {"reward (all sampled groups)": reward, "trailing mean over 10 steps": moving_average(reward, 10)}
    if val_rows(rows):
        plot_reward_and_validation(reward_lines, rows, rd.report / f"{stage}_reward.png",
                                   f"{stage}: reward per step and held-out validation accuracy")
    else:
        plots.curves(reward_lines, "mean reward", f"{stage}: reward per step", rd.report / f"{stage}_reward.png")
    plots.curves({"all response tokens": series(rows, "entropy"),
                  "top-20% (forking) tokens": series(rows, "entropy_forking")},
                 "policy entropy (nats)", f"{stage}: policy entropy per step", rd.report / f"{stage}_entropy.png")
    images += [f"{stage}_reward.png", f"{stage}_entropy.png"]
    if any(r.get("entropy_planning") is not None for r in rows):
        plots.curves({"planning tokens": series(rows, "entropy_planning"),
                      "execution tokens": series(rows, "entropy_execution")}, "policy entropy (nats)",
                     f"{stage}: planning vs execution entropy", rd.report / f"{stage}_planning.png")
        images.append(f"{stage}_planning.png")
    if any("forking_overlap_with_init" in r for r in rows):
        plots.curves({"forking-token share": series(rows, "forking_token_share"),
                      "top-ρ overlap with initial model": series(rows, "forking_overlap_with_init")},
                     "fraction", f"{stage}: forking tokens", rd.report / f"{stage}_forking.png")
        images.append(f"{stage}_forking.png")
    window = max(1, len(rows) // 10)  # single steps are noisy: compare the first and last tenth of the run

    def change(key: str, digits: int) -> str:
        head = [r.get(key) or 0.0 for r in rows[:window]]
        tail = [r.get(key) or 0.0 for r in rows[-window:]]
        return f"{sum(head) / len(head):.{digits}f} → {sum(tail) / len(tail):.{digits}f}"

    text = [f"### `{stage}`",
            f"{len(rows)} steps (means over the first and last {window}): reward {change('reward_mean', 3)}; "
            f"policy entropy {change('entropy', 3)}; all-equal groups {change('all_equal_share', 2)}; "
            f"response length {change('response_length', 1)} tokens."]
    h, r = series(rows, "entropy")[1], series(rows, "reward_mean")[1]
    try:
        fit = fit_entropy_law(h, r)
        forecast = fit_and_forecast(h, r, law_fit_fraction)
        plots.entropy_law(h, r, fit, rd.report / f"{stage}_entropy_law.png", f"{stage}: R = -a·exp(H) + b")
        images.append(f"{stage}_entropy_law.png")
        rmse = forecast["forecast_rmse"]
        text.append(f"Entropy law R = −a·exp(H) + b: a = {fit.a:.4f}, b = {fit.b:.4f}, R² = {fit.r2:.3f}, "
                    f"RMSE {fit.rmse:.4f} over {fit.n} steps; predicted ceiling −a + b = {fit.ceiling:.3f}. "
                    f"Fitted on the first {forecast['fit_points']} steps, it forecasts the remaining "
                    f"{forecast['forecast_points']} with RMSE "
                    f"{'–' if rmse is None else f'{rmse:.4f}'}." + verdict(fit.r2, fit.n))
    except ValueError as err:
        text.append(f"Entropy law: not fitted ({err}).")
    val_md, val_images = validation_text(rows, stage, rd.report)
    if val_md:
        text.append(val_md)
        images += val_images
    scaling_md, scaling_images = scaling_section(rows, stage, rd.report)
    if scaling_md:
        text.append(scaling_md)
        images += scaling_images
    return "\n".join(text) + "\n\n" + "\n".join(f"![{i[:-4]}]({i})" for i in images) + "\n", images
