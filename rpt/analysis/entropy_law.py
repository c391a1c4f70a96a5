"""The entropy–performance law of arXiv 2505.22617: R = −a·exp(H) + b.

R is reward (or accuracy), H the mean policy entropy. With x = exp(H) the law is linear in x, so the fit is
ordinary least squares (closed form, no optimiser): a = −slope, b = intercept. The predicted ceiling, reached when
entropy is spent (H = 0), is −a + b. ``fit_and_forecast`` fits on the first part of a run and scores the
prediction of the rest (the paper fit ~36 steps and predicted the next 200 within ~1% RMSE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class EntropyLawFit:
    a: float
    b: float
    r2: float  # coefficient of determination on the fitted points
    rmse: float  # root-mean-square error on the fitted points
    n: int  # points used

    @property
    def ceiling(self) -> float:
        return -self.a + self.b

    def predict(self, entropy) -> np.ndarray:
        return -self.a * np.exp(np.asarray(entropy, dtype=float)) + self.b

    def as_dict(self) -> dict:
        return {**asdict(self), "ceiling": self.ceiling}


def fit_entropy_law(entropy, reward) -> EntropyLawFit:
    h = np.asarray(entropy, dtype=float)
    r = np.asarray(reward, dtype=float)
    ok = np.isfinite(h) & np.isfinite(r)
    h, r = h[ok], r[ok]
    if len(h) < 3:
        raise ValueError(f"need at least 3 (entropy, reward) points to fit, got {len(h)}")
    x = np.exp(h)
    if np.ptp(x) == 0:
        raise ValueError("entropy is constant over the run: the law cannot be fitted")
    slope, intercept = np.polyfit(x, r, 1)
    pred = slope * x + intercept
    ss_res = float(((r - pred) ** 2).sum())
    ss_tot = float(((r - r.mean()) ** 2).sum())
    return EntropyLawFit(a=float(-slope), b=float(intercept), r2=1.0 - ss_res / ss_tot if ss_tot else 0.0,
                         rmse=float(np.sqrt(ss_res / len(r))), n=int(len(r)))


def fit_and_forecast(entropy, reward, fit_fraction: float) -> dict:
    """Fit on the first ``fit_fraction`` of the points; RMSE of the forecast on the rest."""
    h = np.asarray(entropy, dtype=float)
    r = np.asarray(reward, dtype=float)
    k = max(3, int(len(h) * fit_fraction))
    fit = fit_entropy_law(h[:k], r[:k])
    rest_h, rest_r = h[k:], r[k:]
    forecast_rmse = float(np.sqrt(np.mean((fit.predict(rest_h) - rest_r) ** 2))) if len(rest_h) else None
    return {"fit": fit.as_dict(), "fit_points": k, "forecast_points": int(len(rest_h)),
            "forecast_rmse": forecast_rmse}
