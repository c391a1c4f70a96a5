"""Position selection rules: which corpus positions become next-token reasoning tasks.

Documents come split into training and held-out (validation, test) documents by `prep` (``data_prep/doc_splits``).
Training positions are chosen by entropy threshold, by top fraction, or at random with the same count as the threshold
rule would give (the baseline). An optional ``max_entropy`` drops near-uniform positions in every mode: where the
proxy sees many equally likely continuations (a fresh random number, a name), no reasoning can predict the token,
and such positions are what made entropy selection collapse on noisy corpora (PretrainZero, arXiv 2512.03442).
Held-out positions are every position above the lowest difficulty threshold, bucketed by the highest threshold it
passes (paper: 0.5 / 1.0 / 1.5 → easy / medium / hard; ``rpt.positions.bucket_indices``).

The threshold and held-out rules look at one document at a time; the top fraction needs one corpus-wide cut and
the random baseline one corpus-wide draw, which ``data_prep/select_passes.py`` makes in extra passes over the
stored entropies.
"""

from __future__ import annotations

import numpy as np


def eligible_offsets(entropy: np.ndarray, sel_cfg) -> np.ndarray:
    """Offsets with a scored entropy, enough context and (with ``max_entropy``) not near-uniform."""
    idx = np.arange(len(entropy))
    ok = (idx >= sel_cfg.min_context_tokens) & ~np.isnan(entropy)
    if sel_cfg.max_entropy is not None:
        ok &= np.nan_to_num(entropy, nan=np.inf) <= sel_cfg.max_entropy
    return idx[ok]


def _cap(positions: np.ndarray, entropy: np.ndarray, cap: int) -> np.ndarray:
    if len(positions) <= cap:
        return positions
    return np.sort(positions[np.argsort(-entropy[positions], kind="stable")[:cap]])


def threshold_positions(entropy: np.ndarray, sel_cfg) -> np.ndarray:
    """One document's training positions under the threshold rule (and the count the random baseline matches)."""
    p = eligible_offsets(entropy, sel_cfg)
    return _cap(p[entropy[p] > sel_cfg.threshold], entropy, sel_cfg.max_per_doc)


def top_fraction_positions(entropy: np.ndarray, sel_cfg, cut: np.float32) -> np.ndarray:
    """One document's training positions at or above the corpus-wide cut (the ``1 - top_fraction`` quantile of
    every eligible training entropy)."""
    p = eligible_offsets(entropy, sel_cfg)
    return _cap(p[entropy[p] >= cut], entropy, sel_cfg.max_per_doc)


def random_same_count(offsets: np.ndarray, per_doc: np.ndarray, count: int, cap: int, rng: np.random.Generator,
                      chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """The random baseline: ``count`` positions drawn uniformly from every eligible training position (``offsets``:
    each document's eligible offsets end to end, ``per_doc``: how many each has, e.g. memory-mapped), at most
    ``cap`` per document. A walk along one seeded permutation of all of them, taking a position while its document
    has fewer than ``cap``, until ``count`` are taken; walked ``chunk`` at a time. Returns (document index among
    ``per_doc``, offset) sorted."""
    order = rng.permutation(len(offsets))
    bounds = np.cumsum(per_doc)
    taken_per_doc = np.zeros(len(per_doc), dtype=np.int64)
    taken: list[np.ndarray] = []
    left = count
    for start in range(0, len(order), chunk):
        if left <= 0:
            break
        flat = order[start:start + chunk]
        doc = np.searchsorted(bounds, flat, side="right")
        # the j-th draw (in walk order) of a document within this chunk is taken iff earlier chunks took < cap - j
        by_doc = np.argsort(doc, kind="stable")
        sorted_doc = doc[by_doc]
        first = np.flatnonzero(np.r_[True, sorted_doc[1:] != sorted_doc[:-1]])
        occurrence = np.empty(len(flat), dtype=np.int64)
        occurrence[by_doc] = np.arange(len(flat)) - np.repeat(first, np.diff(np.r_[first, len(flat)]))
        accepted = np.flatnonzero(taken_per_doc[doc] + occurrence < cap)[:left]
        np.add.at(taken_per_doc, doc[accepted], 1)
        taken.append(flat[accepted])
        left -= len(accepted)
    flat = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    return np.searchsorted(bounds, flat, side="right"), np.asarray(offsets[flat], dtype=np.int64)


def heldout_positions(entropy: np.ndarray, sel_cfg) -> np.ndarray:
    """Every eligible position above the lowest difficulty threshold."""
    p = eligible_offsets(entropy, sel_cfg)
    return p[entropy[p] > sel_cfg.difficulty_thresholds[0]]
