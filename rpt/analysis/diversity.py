"""How diverse a group of responses to one prompt is ("RL squeezes, SFT expands", arXiv 2509.21128), and pass@k.

Per group of G responses: the number of distinct final answers, the share of distinct word 3-grams of the
reasoning, the mean pairwise chrF similarity, and the number of distinct trajectories (responses clustered by
chrF similarity with average linkage, UPGMA, cut at ``threshold``; the paper clusters 256 samples per problem the
same way). pass@k uses the unbiased estimator 1 − C(n−c, k)/C(n, k) of n samples with c correct.

chrF is written out here (character n-gram F-score, n = 1..6, β = 2, as sacrebleu defines it, without its word
n-grams) because it is a few lines and the benchmark tools that ship it are not dependencies of rpt.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


class _CharGrams:
    """A text's character n-gram counts for n = 1..max_n (spaces removed, as chrF does), built once per text so
    a group's pairwise matrix counts each response once, not once per pair and direction."""

    def __init__(self, text: str, max_n: int = 6):
        self.squeezed = text.replace(" ", "")
        s = self.squeezed
        self.counts = [Counter(s[i:i + n] for i in range(len(s) - n + 1)) for n in range(1, max_n + 1)]
        self.totals = [max(len(s) - n + 1, 0) for n in range(1, max_n + 1)]


def _overlap(a: Counter, b: Counter) -> int:
    """Clipped n-gram matches (the size of the multiset intersection), walking the smaller side."""
    if len(a) > len(b):
        a, b = b, a
    return sum(min(c, b[g]) for g, c in a.items() if g in b)


def _chrf_both_ways(hyp: _CharGrams, ref: _CharGrams, beta: float) -> tuple[float, float]:
    """chrF of (hyp against ref, ref against hyp): the overlap is symmetric, so one count gives both."""
    precisions, recalls = [], []
    for h, r, nh, nr in zip(hyp.counts, ref.counts, hyp.totals, ref.totals, strict=True):
        if not nh or not nr:
            continue
        overlap = _overlap(h, r)
        precisions.append(overlap / nh)
        recalls.append(overlap / nr)
    if not precisions:
        same = 1.0 if hyp.squeezed == ref.squeezed else 0.0
        return same, same
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return _f_beta(p, r, beta), _f_beta(r, p, beta)


def _f_beta(p: float, r: float, beta: float) -> float:
    return 0.0 if p + r == 0 else (1 + beta**2) * p * r / (beta**2 * p + r)


def chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF in [0, 1]: the F-beta score of character n-gram precision and recall, averaged over n = 1..max_n
    (orders with no n-grams on either side are left out; two empty strings are identical: 1.0)."""
    return _chrf_both_ways(_CharGrams(hypothesis, max_n), _CharGrams(reference, max_n), beta)[0]


def similarity_matrix(texts: Sequence[str]) -> list[list[float]]:
    """Symmetric chrF similarity matrix (the mean of both directions), each text's n-grams counted once."""
    grams = [_CharGrams(t) for t in texts]
    n = len(texts)
    sim = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            forward, backward = _chrf_both_ways(grams[i], grams[j], 2.0)
            sim[i][j] = sim[j][i] = (forward + backward) / 2
    return sim


def mean_pairwise_similarity(texts: Sequence[str], sim: list[list[float]] | None = None) -> float:
    """Mean chrF similarity over the pairs of ``texts`` (1.0 for fewer than two); ``sim``: their
    ``similarity_matrix`` when already computed."""
    n = len(texts)
    if n < 2:
        return 1.0
    sim = similarity_matrix(texts) if sim is None else sim
    return sum(sim[i][j] for i in range(n) for j in range(i + 1, n)) / (n * (n - 1) / 2)


def distinct_trajectories(texts: Sequence[str], threshold: float = 0.7, sim: list[list[float]] | None = None) -> int:
    """Clusters of ``texts`` under UPGMA (average linkage) on chrF similarity, merging while the two closest
    clusters are at least ``threshold`` similar on average; ``sim``: their ``similarity_matrix`` if known."""
    sim = similarity_matrix(texts) if sim is None else sim
    clusters = [[i] for i in range(len(texts))]
    while len(clusters) > 1:
        best, pair = -1.0, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                s = sum(sim[i][j] for i in clusters[a] for j in clusters[b]) / (len(clusters[a]) * len(clusters[b]))
                if s > best:
                    best, pair = s, (a, b)
        if best < threshold:
            break
        a, b = pair
        clusters[a] += clusters.pop(b)
    return len(clusters)


def distinct_ngram_share(texts: Sequence[str], n: int = 3) -> float:
    """Distinct word n-grams over all word n-grams of ``texts`` (1.0 when there are none)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def distinct_answers(answers: Sequence[str | None]) -> int:
    """Distinct non-empty final answers (whitespace-trimmed)."""
    return len({a.strip() for a in answers if a is not None and a.strip()})


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def group_diversity(texts: Sequence[str], answers: Sequence[str | None], threshold: float = 0.7) -> dict:
    """The four measures for one group of responses to the same prompt (one similarity matrix for both chrF
    measures)."""
    sim = similarity_matrix(texts)
    return {"distinct_answers": distinct_answers(answers), "distinct_ngram_share": distinct_ngram_share(texts),
            "pairwise_similarity": mean_pairwise_similarity(texts, sim),
            "distinct_trajectories": distinct_trajectories(texts, threshold, sim)}
