"""`select` as passes over the stored entropy shards: positions are chosen and written as the shards stream by, so
memory is one shard plus per-document counters, whatever the size of the corpus.

- Pass 1: per document, held-out positions (validation and test documents) and (threshold mode) training positions
  are written at once; documents `prep` dropped as contaminated are skipped; the
  corpus statistics are counted (number, sum, min, max; the high bits of the 80th percentile and, in top-fraction
  mode, of the cut); random mode stores every eligible training offset in a temporary memory-mapped file.
- Pass 2: the statistics' quantiles are refined and the entropy histogram counted; random mode first draws its
  positions (one permutation of the eligible offsets: 8 bytes per eligible training position, the one structure that
  grows with the corpus, kept so that the draw is the same as selecting in memory) and writes them here.
- Pass 3 (top-fraction mode only): the training positions at or above the now exact cut are written.

Each mode picks exactly what selecting over all documents in memory would (tests compare both).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.doc_splits import HELDOUT_SPLITS, TRAIN
from data_prep.entropy import EntropyShards
from data_prep.order_stats import ExactQuantile, StreamingHistogram
from data_prep.selection import (
    eligible_offsets,
    heldout_positions,
    random_same_count,
    threshold_positions,
    top_fraction_positions,
)
from rpt.positions import BUCKETS, PositionWriter, bucket_indices

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 60


@dataclass
class SelectionResult:
    train: int = 0  # training positions written
    heldout: dict = field(default_factory=dict)  # held-out positions written, per split (validation, test)
    trainable: int = 0  # training-document tokens past min_context_tokens (the fraction's denominator)
    scored: int = 0  # tokens with an entropy (all documents)
    entropy_sum: float = 0.0
    entropy_min: np.float32 = np.float32(np.inf)
    entropy_max: np.float32 = np.float32(-np.inf)
    entropy_p80: float = float("nan")
    heldout_buckets: dict = field(default_factory=lambda: {name: Counter() for name in HELDOUT_SPLITS})
    histogram: tuple[np.ndarray, np.ndarray] | None = None  # (counts, edges) of every scored entropy

    def count(self, values: np.ndarray) -> None:
        if len(values):
            self.scored += len(values)
            self.entropy_sum += float(values.sum(dtype=np.float64))
            self.entropy_min = min(self.entropy_min, values.min())
            self.entropy_max = max(self.entropy_max, values.max())


class _Writers:
    """The split writers (train, validation, test) and the counts of what went into them."""

    def __init__(self, positions_dir: Path, thresholds, result: SelectionResult):
        self.writers = {name: PositionWriter(positions_dir, name) for name in ("train", *HELDOUT_SPLITS)}
        self.thresholds, self.result = thresholds, result

    def add(self, split: str, doc: int, offsets: np.ndarray, entropy: np.ndarray) -> None:
        if not len(offsets):
            return
        values = entropy[offsets]
        buckets = bucket_indices(values, self.thresholds)
        self.writers[split].add(doc, offsets, values, buckets)
        if split != "train":
            self.result.heldout_buckets[split].update(BUCKETS[b] for b in buckets if b >= 0)

    def close(self) -> None:
        counts = {name: writer.close() for name, writer in self.writers.items()}
        self.result.train = counts.pop("train")
        self.result.heldout = counts


def _documents(shards: EntropyShards):
    for shard in shards:
        yield from enumerate(shard.per_doc(), shard.first_doc)


def select_positions(shards: EntropyShards, doc_split: np.ndarray, sel_cfg, seed: int,
                     positions_dir: Path, heldout_shards: EntropyShards | None = None) -> SelectionResult:
    """Write ``train.npy``, ``validation.npy`` and ``test.npy`` under ``positions_dir`` from the scored ``shards``;
    ``doc_split[d]`` is document d's split (``data_prep/doc_splits.py``); ``heldout_shards``: the held-out
    documents' entropies under another model (the evaluated base, when the proxy is a separate model), else
    ``shards``'. Returns the counts and corpus statistics (of ``shards``)."""
    heldout_entropy = _HeldoutEntropy(heldout_shards)
    names = {code: name for name, code in HELDOUT_SPLITS.items()}
    training = doc_split == TRAIN
    mode = sel_cfg.mode
    if mode not in ("threshold", "top_fraction", "random"):
        raise ValueError(f"select.mode must be threshold, top_fraction or random, got {mode!r}")
    result = SelectionResult()
    writers = _Writers(positions_dir, sel_cfg.difficulty_thresholds, result)
    p80 = ExactQuantile(0.8)
    cut = ExactQuantile(1.0 - sel_cfg.top_fraction) if mode == "top_fraction" else None
    with tempfile.TemporaryDirectory(dir=positions_dir) as scratch:
        pool = _RandomPool(Path(scratch)) if mode == "random" else None
        for d, e in _documents(shards):  # pass 1
            values = e[~np.isnan(e)]
            result.count(values)
            p80.count(values)
            if doc_split[d] in names:
                scored = heldout_entropy(d, e)
                writers.add(names[doc_split[d]], d, heldout_positions(scored, sel_cfg), scored)
            if not training[d]:
                continue
            result.trainable += max(0, len(e) - sel_cfg.min_context_tokens)
            if mode == "threshold":
                writers.add("train", d, threshold_positions(e, sel_cfg), e)
            elif mode == "top_fraction":
                cut.count(e[eligible_offsets(e, sel_cfg)])
            else:
                pool.add(d, eligible_offsets(e, sel_cfg), len(threshold_positions(e, sel_cfg)))
        if not result.scored:
            raise ValueError("select: no token of the RPT split has an entropy (every document is one token long?)")
        drawn = pool.draw(sel_cfg.max_per_doc, np.random.default_rng(seed)) if pool else None
        histogram = StreamingHistogram(HISTOGRAM_BINS, result.entropy_min, result.entropy_max)
        for d, e in _documents(shards):  # pass 2
            values = e[~np.isnan(e)]
            p80.refine(values)
            histogram.add(values)
            if cut is not None and training[d]:
                cut.refine(e[eligible_offsets(e, sel_cfg)])
            if drawn is not None and d in drawn:
                writers.add("train", d, drawn[d], e)
    if cut is not None and cut.n:
        threshold = cut.value()
        log.info("select: top %.1f%% of eligible training entropies is >= %.4f", 100 * sel_cfg.top_fraction, threshold)
        for d, e in _documents(shards):  # pass 3
            if training[d]:
                writers.add("train", d, top_fraction_positions(e, sel_cfg, threshold), e)
    writers.close()
    result.entropy_p80 = float(p80.value())
    result.histogram = (histogram.counts, histogram.edges)
    return result


class _RandomPool:
    """Random mode's pass-1 record: every training document's eligible offsets (in a memory-mapped scratch file) and
    how many positions the threshold rule would take (the count the baseline matches)."""

    def __init__(self, scratch: Path):
        self.path = scratch / "eligible.int64"
        self._file = open(self.path, "wb")  # closed in draw()
        self.docs: list[int] = []
        self.per_doc: list[int] = []
        self.count = 0

    def add(self, doc: int, offsets: np.ndarray, threshold_count: int) -> None:
        self._file.write(np.asarray(offsets, dtype=np.int64).tobytes())
        self.docs.append(doc)
        self.per_doc.append(len(offsets))
        self.count += threshold_count

    def draw(self, cap: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
        """Document → its drawn offsets (sorted)."""
        self._file.close()
        total = sum(self.per_doc)
        offsets = np.memmap(self.path, dtype=np.int64, mode="r", shape=(total,)) if total else np.zeros(0, np.int64)
        which, chosen = random_same_count(offsets, np.array(self.per_doc, dtype=np.int64), self.count, cap, rng)
        del offsets
        docs = np.array(self.docs, dtype=np.int64)[which]
        bounds = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]]) if len(docs) else np.zeros(0, np.int64)
        return {int(docs[b]): part for b, part in zip(bounds, np.split(chosen, bounds[1:]), strict=True)}


class _HeldoutEntropy:
    """Document d's entropies for its held-out positions: from other shards when given, read one shard at a time
    in document order (pass 1 walks the documents in order)."""

    def __init__(self, shards: EntropyShards | None):
        self.shards, self.docs = shards, iter(()) if shards is None else _documents(shards)

    def __call__(self, doc: int, entropy: np.ndarray) -> np.ndarray:
        if self.shards is None:
            return entropy
        for d, e in self.docs:
            if d == doc:
                return e
        raise ValueError(f"held-out entropy shards end before document {doc}")
