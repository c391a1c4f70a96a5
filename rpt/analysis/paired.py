"""Paired differences between two models on the same held-out positions, with uncertainty where the randomness is.

Positions are not independent trials: a run's positions share its seed (its training, its sample of positions)
and come in documents, so a Wilson interval over all positions pooled over seeds is far too narrow. Instead:

- within one run, the two models answered the *same* positions, so their paired difference (mean over the bucket's
  positions of score_a − score_b) cancels the difficulty of that run's positions;
- over runs, each seed gives one such difference, and the 95% Student-t interval over the S seeds (S − 1 degrees
  of freedom) says how far another seed could land: the interval that decides a comparison;
- within runs, a bootstrap over documents (a document's positions drawn together) shows how much the particular
  documents move the difference; it says nothing about other seeds, so it never decides the headline alone.

``evals`` below is ``{run: next_token.json}``. A file written before the eval stage saved per-position ``scores``
still yields its run's difference from the bucket accuracies (both cells average over the same positions, so the
paired mean is the same number), but no document bootstrap; the table says so in a note.
"""

from __future__ import annotations

import math

import numpy as np

BUCKETS = ("easy", "medium", "hard")
BASES = ("base", "hf")  # the base model: pretrained here, or imported; "base" in COMPARISONS stands for either
COMPARISONS = (
    (("rpt", "reasoning_greedy"), ("base", "direct_corpus"), "RPT reasoning first − base direct (corpus tokens)"),
    (("rpt", "reasoning_greedy"), ("base", "direct"), "RPT reasoning first − base direct"),
    (("rpt", "reasoning_greedy"), ("base", "reasoning_greedy"), "RPT reasoning first − base reasoning first: "
                                                                "what RPT added to reasoning"),
    (("rpt", "direct"), ("base", "direct"), "RPT direct − base direct"),
    (("rpt", "reasoning_greedy"), ("cnt", "reasoning_greedy"), "RPT reasoning first − CNT reasoning first"),
    (("rpt", "reasoning_greedy"), ("cnt", "direct_corpus"), "RPT reasoning first − CNT direct (corpus tokens)"),
    (("cnt", "direct_corpus"), ("base", "direct_corpus"), "CNT direct − base direct (corpus tokens)"),
    # RLP (stage `rlp`, experiment=rlp_compare): the same positions, the same start, the same loop settings
    (("rlp", "reasoning_greedy"), ("base", "reasoning_greedy"), "RLP reasoning first − base reasoning first: "
                                                                "what RLP added to reasoning"),
    (("rpt", "reasoning_greedy"), ("rlp", "reasoning_greedy"), "RPT reasoning first − RLP reasoning first"),
    (("rlp", "reasoning_greedy"), ("cnt", "direct_corpus"), "RLP reasoning first − CNT direct (corpus tokens)"),
    (("rlp", "direct"), ("base", "direct"), "RLP direct − base direct"),
)
# downstream (the same test questions for every checkpoint of a run): the control the paper and RLP compare against
DOWNSTREAM_COMPARISONS = (
    ("rl_rpt", "rl_pretrain", "RPT → RL − base → RL"),
    ("rl_rpt", "rl_cnt", "RPT → RL − CNT → RL"),
    ("rl_cnt", "rl_pretrain", "CNT → RL − base → RL"),
    ("rpt", "base", "RPT − base (before RL)"),
    ("rpt", "cnt", "RPT − CNT (before RL)"),
    ("rl_rlp", "rl_pretrain", "RLP → RL − base → RL"),
    ("rl_rpt", "rl_rlp", "RPT → RL − RLP → RL"),
    ("rl_rlp", "rl_cnt", "RLP → RL − CNT → RL"),
)
OPTIONAL_MODELS = {"rlp"}  # a stage only some recipes run: its comparisons go unnamed when no run has it
HEADLINE_COMPARISONS = 2  # the headline takes the first of these with data (old files have no direct_corpus)


# ---------------------------------------------------------------------------------------------- statistics


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student-t critical value: P(|T| < t) = confidence with ``df`` degrees of freedom.

    Exact for integer df (Abramowitz & Stegun 26.7.3/26.7.4, solved by bisection), so the report needs no scipy."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"need df >= 1 and 0 < confidence < 1, got df={df}, confidence={confidence}")
    lo, hi = 0.0, math.pi / 2
    for _ in range(100):  # P(|T| < √df·tan θ) rises with θ on [0, π/2)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _abs_t_cdf(mid, df) < confidence else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def _abs_t_cdf(theta: float, df: int) -> float:
    """P(|T| < √df·tan θ) by the finite series in cos θ that holds for integer df."""
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for k in range(2, df, 2):  # 1 + (1/2)c² + (1·3)/(2·4)c⁴ + … up to c^(df−2)
            term *= (k - 1) / k * c2
            total += term
        return s * total
    if df == 1:
        return 2 / math.pi * theta
    term = total = math.cos(theta)
    for k in range(3, df, 2):  # cos θ + (2/3)cos³θ + (2·4)/(3·5)cos⁵θ + … up to cos^(df−2)
        term *= (k - 1) / k * c2
        total += term
    return 2 / math.pi * (theta + s * total)


def seed_interval(diffs: list[float], confidence: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """Mean of the per-run differences and its Student-t interval (S − 1 df): the seeds are the independent
    replicates, so this is how far the difference could move with other seeds. None interval for one run."""
    values = np.asarray(diffs, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None
    half = t_quantile(confidence, len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, (mean - half, mean + half)


def cluster_bootstrap(per_run_doc_diffs: list[list[np.ndarray]], rng: np.random.Generator | None = None,
                      draws: int = 2000, confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the mean over runs of each run's paired difference, resampling each run's
    documents with replacement (a document's positions stay together: they share a context, so they are one
    draw, not many). Runs stay fixed: this is the spread from the documents, not from the seeds."""
    runs = [docs for docs in per_run_doc_diffs if len(docs)]
    if not runs or len(runs) < len(per_run_doc_diffs):
        return None
    rng = rng if rng is not None else np.random.default_rng(0)
    total = np.zeros(draws)
    for docs in runs:
        sums = np.array([float(np.sum(d)) for d in docs])
        counts = np.array([len(d) for d in docs])
        pick = rng.integers(0, len(docs), size=(draws, len(docs)))
        total += sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(total / len(runs), [tail, 100 - tail])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- one run


def resolve_base(evals: dict[str, dict]) -> str:
    """"base" when any run evaluated a base pretrained here, otherwise "hf" (an imported model)."""
    models = {m for ev in evals.values() for m in list(ev.get("results", {})) + list(ev.get("scores", {}))}
    return next((m for m in BASES if m in models), BASES[0])


def run_difference(evaluation: dict, a: tuple[str, str], b: tuple[str, str], bucket: str):
    """``(mean, doc_diffs)`` of score_a − score_b over the bucket's positions of one run, or None when a cell or
    the bucket is missing. ``doc_diffs``: one array of differences per document (for the bootstrap), or None when
    the file has no per-position scores and documents (then the mean comes from the bucket accuracies)."""
    scores = evaluation.get("scores") or {}
    sa, sb = scores.get(a[0], {}).get(a[1]), scores.get(b[0], {}).get(b[1])
    items = evaluation.get("items") or {}
    if sa is None or sb is None or "entropy" not in items:
        return _accuracy_difference(evaluation, a, b, bucket)
    entropy = np.asarray(items["entropy"], dtype=float)
    if not len(sa) == len(sb) == len(entropy):
        raise ValueError(f"next_token.json: scores of {a} ({len(sa)}), {b} ({len(sb)}) and items "
                         f"({len(entropy)}) are not aligned")
    chosen = entropy > evaluation["thresholds"][BUCKETS.index(bucket)]
    if not chosen.any():
        return None
    diff = (np.asarray(sa, dtype=float) - np.asarray(sb, dtype=float))[chosen]
    if "doc" not in items:
        return float(diff.mean()), None
    docs = np.asarray(items["doc"])[chosen]
    return float(diff.mean()), [diff[docs == d] for d in np.unique(docs)]


def _accuracy_difference(evaluation: dict, a: tuple[str, str], b: tuple[str, str], bucket: str):
    """Difference of the two bucket accuracies: the paired mean when both cells cover the same positions (the
    eval stage scores every mode on the same items; equal n is checked), without documents."""
    results = evaluation.get("results", {})
    ca = results.get(a[0], {}).get(a[1], {}).get(bucket) or {}
    cb = results.get(b[0], {}).get(b[1], {}).get(bucket) or {}
    if ca.get("accuracy") is None or cb.get("accuracy") is None or ca.get("n") != cb.get("n"):
        return None
    return ca["accuracy"] - cb["accuracy"], None


# ---------------------------------------------------------------------------------------------- over runs


def _resolved(comparison, base: str):
    """The comparison with "base" replaced by the runs' base model (``resolve_base``), label included."""
    a, b, label = comparison
    a, b = ((base, cell[1]) if cell[0] == "base" else cell for cell in (a, b))
    return a, b, label if base == "base" else label.replace("base", base)


def comparison_summary(evals: dict[str, dict], a, b, bucket: str) -> dict | None:
    """Per-run differences, their seed-level interval and the document bootstrap for one comparison and bucket;
    None when no run has both cells."""
    per_run = {run: d for run, ev in evals.items() if (d := run_difference(ev, a, b, bucket)) is not None}
    if not per_run:
        return None
    mean, t_ci = seed_interval([d[0] for d in per_run.values()])
    docs = [d[1] for d in per_run.values()]
    boot = cluster_bootstrap(docs, np.random.default_rng(0)) if all(d is not None for d in docs) else None
    return {"diffs": {run: d[0] for run, d in per_run.items()}, "mean": mean, "t": t_ci, "boot": boot}


def pts(x: float) -> str:
    """A difference in percentage points, signed."""
    return f"{100 * x:+.1f}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{pts(ci[0])}, {pts(ci[1])}]"


def missing_scores_note(evals: dict[str, dict]) -> str | None:
    """Name the runs whose file predates per-position scores: their differences come from bucket accuracies."""
    old = [run for run, ev in evals.items() if not ev.get("scores") or "doc" not in (ev.get("items") or {})]
    if not old:
        return None
    return (f"No per-position `scores`/`items` in the eval/next_token.json of {', '.join(f'`{r}`' for r in old)} "
            f"(written before the eval stage saved them): their differences come from the bucket accuracies (the "
            f"same positions in both cells, so the same paired mean), and rows with them have no document "
            f"bootstrap. Rerun `rpt eval` on them for it.")


def paired_table(evals: dict[str, dict], buckets=BUCKETS) -> str:
    """Markdown: one row per comparison × bucket, with each run's paired difference (points), the mean, the 95%
    t-interval over seeds and the 95% document bootstrap; comparisons no run has are named below."""
    base = resolve_base(evals)
    lines = ["| comparison | bucket | per run (points) | mean | 95% t-interval over seeds | "
             "95% document bootstrap | runs |", "|---|---|---|---|---|---|---|"]
    absent = []
    models = {m for ev in evals.values() for m in list(ev.get("results", {})) + list(ev.get("scores", {}))}
    for comparison in COMPARISONS:
        a, b, label = _resolved(comparison, base)
        rows = [(bk, s) for bk in buckets if (s := comparison_summary(evals, a, b, bk)) is not None]
        absent += [label] if not rows and not ({a[0], b[0]} & (OPTIONAL_MODELS - models)) else []
        for bk, s in rows:
            per_run = ", ".join(f"`{r}` {pts(v)}" for r, v in s["diffs"].items())
            lines.append(f"| {label} | {bk} | {per_run} | {pts(s['mean'])} | {fmt_ci(s['t'])} | "
                         f"{fmt_ci(s['boot'])} | {len(s['diffs'])} |")
    notes = [f"Not compared (no run has both cells): {'; '.join(absent)}."] if absent else []
    notes += [n] if (n := missing_scores_note(evals)) else []
    return "\n".join(lines) + ("\n\n" + "\n\n".join(notes) if notes else "")


def paired_headline(evals: dict[str, dict], bucket: str = "hard") -> str:
    """The paper's comparison on one bucket, decided only by the seed-level t-interval: "apart from zero" when it
    excludes 0, otherwise plainly that it includes 0; one run has no seed-level interval at all."""
    base = resolve_base(evals)
    for comparison in COMPARISONS[:HEADLINE_COMPARISONS]:
        a, b, label = _resolved(comparison, base)
        if (s := comparison_summary(evals, a, b, bucket)) is not None:
            break
    else:
        return f"_no RPT reasoning-first and {base} direct results on {bucket} positions to compare_"
    diffs = s["diffs"]
    above = sum(v > 0 for v in diffs.values())
    lead = (f"On **{bucket}** positions, {label}: {pts(s['mean'])} points (mean of the per-run paired differences "
            f"{', '.join(pts(v) for v in diffs.values())}; RPT above in {above} of {len(diffs)} runs)")
    if s["t"] is None:
        within = (f"only the document bootstrap within it, {fmt_ci(s['boot'])}, which says how the documents move "
                  f"this seed's difference, not where another seed would land" if s["boot"] else
                  "and without per-position scores not even a document bootstrap within it")
        return f"{lead}. One seed gives no seed-level interval, {within}: run more seeds to compare."
    lo, hi = s["t"]
    if lo > 0 or hi < 0:
        side = "RPT above" if lo > 0 else "RPT below"
        return f"{lead}; the 95% t-interval over seeds {fmt_ci(s['t'])} is apart from zero: {side}."
    return (f"{lead}; the 95% t-interval over seeds {fmt_ci(s['t'])} includes 0: these seeds do not show a "
            f"difference.")


def downstream_paired_table(downstream: dict[str, dict], metrics=("greedy", "pass@1")) -> str:
    """Markdown: per checkpoint pair and metric, each run's difference on its test questions (points), the mean and
    the 95% t-interval over seeds. ``downstream``: ``{run: eval/downstream.json}``."""
    lines = ["| comparison | metric | per run (points) | mean | 95% t-interval over seeds | runs |",
             "|---|---|---|---|---|---|"]
    for a, b, label in DOWNSTREAM_COMPARISONS:
        for metric in metrics:
            diffs = {run: res[a][metric] - res[b][metric] for run, ds in downstream.items()
                     if (res := ds["results"]).get(a, {}).get(metric) is not None
                     and res.get(b, {}).get(metric) is not None}
            if not diffs:
                continue
            mean, t_ci = seed_interval(list(diffs.values()))
            per_run = ", ".join(f"`{r}` {pts(v)}" for r, v in diffs.items())
            lines.append(f"| {label} | {metric} | {per_run} | {pts(mean)} | {fmt_ci(t_ci)} | {len(diffs)} |")
    return "\n".join(lines) if len(lines) > 2 else "_no pair of downstream checkpoints to compare_"
