"""Validation curves of an RL stage: greedy accuracy on a fixed held-out sample, logged at some steps only.

Training reward is measured on the prompts being trained on, sampled, and (with dynamic sampling) after dropping
all-equal groups, so it can rise while held-out accuracy does not. Where the trainer logged ``val/accuracy``
(and ``val/n``; RPT stages also ``val/accuracy_{easy,medium,hard}`` with ``val/n_*``) we plot it under the reward
with 95% Wilson bands, and fit the entropy–performance law R = −a·exp(H) + b on validation accuracy against the
policy entropy of the same steps, as arXiv 2505.22617 does (its R is validation performance). Rows without these
keys leave the report unchanged.
"""

from __future__ import annotations

from rpt.analysis import plots
from rpt.analysis.entropy_law import fit_entropy_law
from rpt.analysis.fits import verdict
from rpt.analysis.intervals import accuracy_interval, fmt_accuracy

BUCKETS = ("easy", "medium", "hard")
MIN_FIT_POINTS = 3


def val_rows(rows: list[dict]) -> list[dict]:
    """Rows that carry a validation measurement (accuracy and its n)."""
    return [r for r in rows if r.get("val/accuracy") is not None and r.get("val/n")]


def val_series(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """Plot label → (accuracy key, n key) for the validation keys present."""
    out = {"validation (all; band: 95% Wilson)": ("val/accuracy", "val/n")}
    for b in BUCKETS:
        if any(r.get(f"val/accuracy_{b}") is not None for r in rows):
            out[f"validation ({b})"] = (f"val/accuracy_{b}", f"val/n_{b}")
    return out


def plot_reward_and_validation(reward: dict, rows: list[dict], path, title: str) -> None:
    """The reward figure with a validation-accuracy panel (Wilson band on the all-positions line)."""
    vrows = val_rows(rows)
    val, bands = {}, {}
    for label, (acc_key, n_key) in val_series(vrows).items():
        pts = [(r["step"], r[acc_key], r.get(n_key) or 0) for r in vrows if r.get(acc_key) is not None]
        val[label] = ([p[0] for p in pts], [p[1] for p in pts])
        if acc_key == "val/accuracy":
            cis = [accuracy_interval(p[1], p[2]) or (p[1], p[1]) for p in pts]
            bands[label] = ([c[0] for c in cis], [c[1] for c in cis])
    plots.reward_and_validation(reward, val, bands, title, path)


def validation_text(rows: list[dict], stage: str, report_dir) -> tuple[str, list[str]]:
    """Markdown (first and last validation accuracy, the law fitted on validation accuracy) and image names."""
    vrows = val_rows(rows)
    if not vrows:
        return "", []
    first, last = vrows[0], vrows[-1]
    lines = [f"Validation (greedy, fixed held-out sample; {len(vrows)} measurements): step {first['step']} "
             f"{fmt_accuracy(first['val/accuracy'], first['val/n'])} → step {last['step']} "
             f"{fmt_accuracy(last['val/accuracy'], last['val/n'])}."]
    buckets = [f"{b} {fmt_accuracy(last[f'val/accuracy_{b}'], last.get(f'val/n_{b}'))}"
               for b in BUCKETS if last.get(f"val/accuracy_{b}") is not None]
    if buckets:
        lines.append(f"At step {last['step']} by bucket: " + "; ".join(buckets) + ".")
    images = []
    pts = [(r["entropy"], r["val/accuracy"]) for r in vrows if r.get("entropy") is not None]
    if len(pts) < MIN_FIT_POINTS:
        lines.append(f"Entropy law on validation accuracy: too few validation points to fit ({len(pts)} with "
                     f"entropy, {MIN_FIT_POINTS} needed).")
        return "\n".join(lines), images
    h, acc = [p[0] for p in pts], [p[1] for p in pts]
    try:
        fit = fit_entropy_law(h, acc)
    except ValueError as err:
        lines.append(f"Entropy law on validation accuracy: not fitted ({err}).")
        return "\n".join(lines), images
    name = f"{stage}_val_entropy_law.png"
    plots.entropy_law(h, acc, fit, report_dir / name, f"{stage}: validation accuracy = -a·exp(H) + b",
                      ylabel="validation accuracy")
    images.append(name)
    lines.append(f"Entropy law on validation accuracy R = −a·exp(H) + b: a = {fit.a:.4f}, b = {fit.b:.4f}, "
                 f"R² = {fit.r2:.3f} over n = {fit.n} validation points; predicted ceiling −a + b = "
                 f"{100 * fit.ceiling:.1f}% (the accuracy when entropy is spent)." + verdict(fit.r2, fit.n))
    return "\n".join(lines), images
