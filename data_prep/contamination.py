"""Held out by content, not only by document: how much of each held-out document the training splits contain.

Documents held out by id can still carry training material verbatim (the demo once drew its held-out problems from
the same generator stream as its pretraining problems, so every held-out problem had been trained on). The measure is
the decontamination of GPT-3 (Brown et al. 2020, appendix C) and lm-evaluation-harness: a held-out document is
*contaminated* when any of its word n-grams (13 by default) occurs in the training data. Beside that rule we count
the share of a document's n-grams that occur (``ngram_overlap``), exact duplicates (the whole normalised text is a
training document's) and near duplicates (overlap at or above ``near_duplicate``), and line-level overlap grouped
by the line's length in words, for corpora whose lines are items (the demo: one problem per line, so a line of 7
words is a 3-term problem). Words are the whitespace-split, lower-cased text; a document shorter than n words has
no n-gram and is contaminated only as an exact duplicate (counted as ``too_short``).

Written here rather than taken from lm-evaluation-harness, whose decontamination reads its own task files against
a pre-built n-gram archive of the Pile, not two splits of the user's corpus. Words and n-grams are kept as 64-bit
hashes in sorted numpy arrays (8 bytes per distinct training n-gram); a hash collision (chance about m²/2⁶⁵ for m
distinct n-grams) can only over-report overlap, never hide it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling n-gram hash (golden ratio)
LONG_LINE = 17  # lines of this many words or more are counted together


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def words_of(text: str) -> list[str]:
    return text.lower().split()


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """The 64-bit hash of every run of ``n`` consecutive words (empty when there are fewer than ``n`` words)."""
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter((_hash(w) for w in words), dtype=np.uint64, count=len(words))
    out = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # the hash is arithmetic modulo 2**64 on purpose
        for k in range(n):
            out = out * _MULT + h[k:len(h) - n + 1 + k]
    return out


def _lines(text: str) -> list[str]:
    return [" ".join(words_of(line)) for line in text.splitlines() if line.strip()]


def _line_length(line: str) -> str:
    count = line.count(" ") + 1
    return str(count) if count < LONG_LINE else f"{LONG_LINE}+"


class TrainingIndex:
    """Every distinct n-gram, line and whole document of the training texts, as sorted hash arrays."""

    def __init__(self, texts: Iterable[str], n: int, chunk: int = 1 << 22):
        self.n = n
        grams: list[np.ndarray] = [np.zeros(0, dtype=np.uint64)]
        pending: list[np.ndarray] = []
        size, lines, docs = 0, set(), set()
        for text in texts:
            words = words_of(text)
            docs.add(_hash(" ".join(words)))
            lines.update(_hash(line) for line in _lines(text))
            pending.append(ngram_hashes(words, n))
            size += len(pending[-1])
            if size >= chunk:  # fold into the sorted set now and then, so memory follows the distinct n-grams
                grams = [np.unique(np.concatenate(grams + pending))]
                pending, size = [], 0
        self.grams = np.unique(np.concatenate(grams + pending))
        self.lines, self.docs = lines, docs

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        if not len(self.grams) or not len(hashes):
            return np.zeros(len(hashes), dtype=bool)
        at = np.minimum(np.searchsorted(self.grams, hashes), len(self.grams) - 1)
        return self.grams[at] == hashes


@dataclass
class Overlap:
    """Per held-out document (in the order given) and summed over them."""

    ngram_overlap: list[float] = field(default_factory=list)  # share of the document's n-grams found in training
    contaminated: list[bool] = field(default_factory=list)  # any n-gram found, or an exact duplicate
    exact_duplicate: list[bool] = field(default_factory=list)
    near_duplicate: list[bool] = field(default_factory=list)
    too_short: int = 0
    lines: Counter = field(default_factory=Counter)  # held-out lines by length in words
    lines_in_training: Counter = field(default_factory=Counter)  # of those, found verbatim in training

    def summary(self, n: int, near: float) -> dict:
        docs = len(self.contaminated)
        shares = np.asarray(self.ngram_overlap, dtype=np.float64)
        return {
            "ngram": n, "near_duplicate_threshold": near, "heldout_documents": docs,
            "contaminated": int(sum(self.contaminated)), "exact_duplicates": int(sum(self.exact_duplicate)),
            "near_duplicates": int(sum(self.near_duplicate)), "too_short_for_ngrams": self.too_short,
            "mean_ngram_overlap": float(shares.mean()) if docs else None,
            "lines_by_words": {k: {"lines": self.lines[k], "in_training": self.lines_in_training[k]}
                               for k in sorted(self.lines, key=lambda s: int(s.rstrip("+")))},
        }


def measure_overlap(heldout_texts: Iterable[str], index: TrainingIndex, near_duplicate: float = 0.8) -> Overlap:
    """How much of each held-out text ``index`` (the training splits) contains."""
    out = Overlap()
    for text in heldout_texts:
        words = words_of(text)
        grams = ngram_hashes(words, index.n)
        found = index.contains(grams)
        exact = _hash(" ".join(words)) in index.docs
        share = float(found.mean()) if len(grams) else (1.0 if exact else 0.0)
        out.too_short += not len(grams)
        out.ngram_overlap.append(share)
        out.exact_duplicate.append(exact)
        out.near_duplicate.append(share >= near_duplicate)
        out.contaminated.append(bool(found.any()) or exact)
        for line in _lines(text):
            out.lines[_line_length(line)] += 1
            out.lines_in_training[_line_length(line)] += _hash(line) in index.lines
    return out
