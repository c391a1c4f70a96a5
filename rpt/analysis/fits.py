"""When a fitted curve says something: a fit through few points, or one that explains little of their variance,
is reported as not informative (its points still drawn, its curve and numbers marked), so it never reads as a
finding. Shared by the entropy-law fits and the compute-scaling fits of the report."""

from __future__ import annotations

MIN_POINTS = 8  # fewer points than this: a 2- or 3-parameter curve fits noise
MIN_R2 = 0.5  # below this the curve explains less than half of the points' variance


def informative(r2: float, n: int, degenerate: str | None = None) -> bool:
    return n >= MIN_POINTS and r2 >= MIN_R2 and not degenerate


def verdict(r2: float, n: int, degenerate: str | None = None) -> str:
    """Empty for an informative fit, else a sentence saying why its numbers say nothing. ``degenerate`` names a
    reason the fit's own search gives (a parameter stuck at the bound of its search)."""
    if informative(r2, n, degenerate):
        return ""
    why = [f"n = {n} < {MIN_POINTS} points"] if n < MIN_POINTS else []
    why += [f"R² = {r2:.2f} < {MIN_R2}"] if r2 < MIN_R2 else []
    why += [degenerate] if degenerate else []
    return (f" **Not informative** ({', '.join(why)}): the points are shown, the curve is not a finding.")
