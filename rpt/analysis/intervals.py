"""Uncertainty of an accuracy: the Wilson score interval, and the one way the report writes an accuracy.

Held-out sets are small (the demo's hard bucket has 37 positions), so a bare percentage hides how far it could
move. Wilson's interval stays inside [0, 1] and behaves at 0 and n successes, where the normal approximation
collapses to a zero-width interval. For a mean over k samples per item ("avg@k") the report uses the same formula
with the n items as trials and the mean as the proportion: the per-item mean is a [0, 1] variable whose variance is
at most p(1-p), so this is conservative, whereas n·k trials would treat the k samples of one item as independent.
"""

from __future__ import annotations

import math

Z95 = 1.96  # two-sided 95% standard-normal quantile (1.95996…, rounded as usually quoted)

AVG_AT_K_NOTE = ("Intervals are 95% Wilson score intervals over the n items; for avg@k (the mean over k samples per "
                 "item) the per-item mean is taken as the proportion with n trials, which is conservative (the mean "
                 "of a [0, 1] score has variance at most p(1-p)), whereas n·k trials would count the k samples of "
                 "one item as independent.")


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95% (by default) Wilson score interval for ``successes`` out of ``n``; None when ``n`` is 0.

    ``successes`` may be fractional (accuracy × n for a mean of per-item scores)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def accuracy_interval(accuracy: float | None, n: int) -> tuple[float, float] | None:
    """Wilson interval of a mean accuracy over ``n`` items (None when there is no accuracy or no item)."""
    if accuracy is None or not n:
        return None
    return wilson_interval(min(max(accuracy * n, 0.0), float(n)), n)  # clamp float rounding of mean × n


def fmt_accuracy(accuracy: float | None, n: int | None) -> str:
    """``24.3% [13.4, 40.1] (n=37)``; ``– (n=0)`` when there is nothing to report."""
    n = int(n or 0)
    ci = accuracy_interval(accuracy, n)
    if ci is None:
        return f"– (n={n})"
    return f"{100 * accuracy:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] (n={n})"
