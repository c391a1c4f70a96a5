"""Position selection: which corpus positions become next-token reasoning tasks.

Documents are split by a hash of their id into training and held-out documents (never overlapping). Training
positions are chosen by entropy threshold, by top fraction, or at random with the same count as the threshold
rule would give (the baseline). An optional ``max_entropy`` drops near-uniform positions in every mode: where the
proxy sees many equally likely continuations (a fresh random number, a name), no reasoning can predict the token,
and such positions are what made entropy selection collapse on noisy corpora (PretrainZero, arXiv 2512.03442).
Held-out positions are every position above the lowest difficulty threshold, bucketed by the highest threshold it
passes (paper: 0.5 / 1.0 / 1.5 → easy / medium / hard).
"""

from __future__ import annotations

import hashlib

import numpy as np

BUCKETS = ["easy", "medium", "hard"]


def is_heldout(doc_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(("heldout:" + doc_id).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def bucket_of(entropy: float, thresholds) -> str | None:
    passed = [name for name, thr in zip(BUCKETS, thresholds, strict=True) if entropy > thr]
    return passed[-1] if passed else None


def _eligible(entropy: np.ndarray, min_context: int, max_entropy: float | None) -> np.ndarray:
    idx = np.arange(len(entropy))
    ok = (idx >= min_context) & ~np.isnan(entropy)
    if max_entropy is not None:
        ok &= np.nan_to_num(entropy, nan=np.inf) <= max_entropy
    return idx[ok]


def _cap(positions: np.ndarray, entropy: np.ndarray, cap: int) -> np.ndarray:
    if len(positions) <= cap:
        return positions
    return np.sort(positions[np.argsort(-entropy[positions], kind="stable")[:cap]])


def choose_training_positions(entropies: list[np.ndarray], sel_cfg, rng: np.random.Generator) -> list[np.ndarray]:
    """Per document, the token offsets selected for RPT training."""
    eligible = [_eligible(e, sel_cfg.min_context_tokens, sel_cfg.max_entropy) for e in entropies]
    if sel_cfg.mode in ("threshold", "random"):
        chosen = [_cap(p[e[p] > sel_cfg.threshold], e, sel_cfg.max_per_doc)
                  for p, e in zip(eligible, entropies, strict=True)]
        if sel_cfg.mode == "random":
            count = sum(len(c) for c in chosen)
            chosen = _random_same_count(eligible, count, sel_cfg.max_per_doc, rng)
        return chosen
    if sel_cfg.mode == "top_fraction":
        values = np.concatenate([e[p] for p, e in zip(eligible, entropies, strict=True)]) if eligible else np.array([])
        if len(values) == 0:
            return [p for p in eligible]
        cut = np.quantile(values, 1.0 - sel_cfg.top_fraction)
        return [_cap(p[e[p] >= cut], e, sel_cfg.max_per_doc) for p, e in zip(eligible, entropies, strict=True)]
    raise ValueError(f"select.mode must be threshold, top_fraction or random, got {sel_cfg.mode!r}")


def _random_same_count(eligible, count, cap, rng) -> list[np.ndarray]:
    flat = [(d, int(t)) for d, p in enumerate(eligible) for t in p]
    order = rng.permutation(len(flat))
    per_doc: list[list[int]] = [[] for _ in eligible]
    taken = 0
    for i in order:
        d, t = flat[i]
        if taken >= count:
            break
        if len(per_doc[d]) < cap:
            per_doc[d].append(t)
            taken += 1
    return [np.array(sorted(p), dtype=np.int64) for p in per_doc]


def heldout_positions(entropy: np.ndarray, sel_cfg) -> np.ndarray:
    """Every eligible position above the lowest difficulty threshold."""
    p = _eligible(entropy, sel_cfg.min_context_tokens, sel_cfg.max_entropy)
    return p[entropy[p] > sel_cfg.difficulty_thresholds[0]]


def position_record(doc_id: str, tokens: np.ndarray, t: int, entropy: float, sel_cfg) -> dict:
    start = max(0, t - sel_cfg.max_context_tokens)
    return {
        "doc_id": doc_id, "offset": int(t), "context_start": int(start),
        "context": tokens[start:t].tolist(), "target": tokens[t:t + sel_cfg.max_target_tokens].tolist(),
        "entropy": float(entropy), "bucket": bucket_of(entropy, sel_cfg.difficulty_thresholds),
    }
