"""Selected positions by reference: the `positions/` contract between `select` and every stage that reads it.

A split (``train``, ``heldout``) is one ``.npy`` array of fixed-size records — document index into the RPT split's
indexed dataset (``data/rpt``), token offset, proxy entropy, difficulty bucket — 21 bytes a position, whatever the
context length. ``positions.json`` (written last by `select`) names the corpus and its checksums and the context
and target lengths. A reader memory-maps the records and reads an item's context (up to ``max_context_tokens``
tokens before the offset) and target (up to ``max_target_tokens`` from it) from the memory-mapped corpus only when
the item's ``"context"``/``"target"`` are used, so a data-parallel rank touches only the items it trains on and no
rank holds the whole file as Python objects. ``PositionWriter`` streams records to disk as `select` finds them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from operator import index as as_index
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from rpt.rundir import atomic_path, read_json, write_json

POSITION_DTYPE = np.dtype([("doc", "<i8"), ("offset", "<i8"), ("entropy", "<f4"), ("bucket", "i1")])
BUCKETS = ("easy", "medium", "hard")  # bucket index 0, 1, 2; -1: below the lowest difficulty threshold
META = "positions.json"
CORPUS = "data/rpt"  # the indexed dataset the positions point into, relative to the run directory


def bucket_indices(entropy: np.ndarray, thresholds) -> np.ndarray:
    """Per value, the index of the last difficulty threshold it exceeds (-1: none), as ``bucket_of`` names it."""
    out = np.full(len(entropy), -1, dtype=np.int8)
    for i, thr in enumerate(thresholds):
        out[np.asarray(entropy) > thr] = i
    return out


def split_path(positions_dir: Path, split: str) -> Path:
    return Path(positions_dir) / f"{split}.npy"


class PositionWriter:
    """Streams records into ``<split>.npy``: appended to an anonymous temp file, then written behind the ``.npy``
    header (the count is known only at the end) and renamed into place by ``close``."""

    def __init__(self, positions_dir: Path, split: str):
        self.path = split_path(positions_dir, split)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._raw = tempfile.TemporaryFile(dir=self.path.parent)

    def add(self, doc: int, offsets: np.ndarray, entropy: np.ndarray, bucket: np.ndarray) -> None:
        records = np.empty(len(offsets), dtype=POSITION_DTYPE)
        records["doc"], records["offset"] = doc, offsets
        records["entropy"], records["bucket"] = entropy, bucket
        self._raw.write(records.tobytes())
        self.count += len(records)

    def close(self) -> int:
        header = {"descr": np.lib.format.dtype_to_descr(POSITION_DTYPE), "fortran_order": False,
                  "shape": (self.count,)}
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            self._raw.seek(0)
            shutil.copyfileobj(self._raw, f)
        self._raw.close()
        return self.count


def write_meta(positions_dir: Path, corpus_manifest: dict, max_context_tokens: int, max_target_tokens: int,
               counts: dict[str, int]) -> None:
    """``positions.json``: what the records point into and how items are cut; written last by `select`."""
    write_json(Path(positions_dir) / META, {
        "corpus": CORPUS, "corpus_sha256": corpus_manifest["sha256"], "max_context_tokens": max_context_tokens,
        "max_target_tokens": max_target_tokens, "counts": counts})


class PositionItem(Mapping):
    """One position as a read-only mapping: ``doc``, ``doc_id``, ``offset``, ``context_start``, ``entropy``,
    ``bucket`` (name or None), and ``context``/``target`` token ids, read from the corpus on first use."""

    KEYS = ("doc", "doc_id", "offset", "context_start", "context", "target", "entropy", "bucket")

    def __init__(self, positions: Positions, index: int):
        self._positions, self._index = positions, index
        self._cache: dict = {}

    def __getitem__(self, key: str):
        if key not in self._cache:
            self._cache[key] = self._positions.field(self._index, key)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)

    def __repr__(self) -> str:
        return f"PositionItem({self._positions.split}[{self._index}])"


class Positions(Sequence):
    """The positions of one split: memory-mapped records; ``positions[i]`` is a lazy ``PositionItem``."""

    def __init__(self, positions_dir: Path, split: str):
        positions_dir = Path(positions_dir)
        if not (positions_dir / META).exists():
            raise FileNotFoundError(f"no finished positions in {positions_dir} (missing {META}); run `rpt select`")
        meta = read_json(positions_dir / META)
        self.split = split
        self.records = np.load(split_path(positions_dir, split), mmap_mode="r", allow_pickle=False)
        if self.records.dtype != POSITION_DTYPE:
            raise ValueError(f"{split_path(positions_dir, split)}: records of {self.records.dtype}, expected "
                             f"{POSITION_DTYPE}")
        self.prefix = positions_dir.parent / meta["corpus"]
        manifest = Path(f"{self.prefix}.manifest.json")
        if not manifest.exists() or read_json(manifest)["sha256"] != meta["corpus_sha256"]:
            raise ValueError(f"{positions_dir} was selected from another {self.prefix} than the one there now "
                             f"(checksums differ or it is missing); rerun `rpt select`")
        self.corpus = IndexedDataset(str(self.prefix))
        self.max_context_tokens = int(meta["max_context_tokens"])
        self.max_target_tokens = int(meta["max_target_tokens"])

    @classmethod
    def of_run(cls, rd, split: str) -> Positions:
        return cls(rd.positions, split)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = as_index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"position {i} out of range for {len(self)} {self.split} positions")
        return PositionItem(self, i % len(self))

    @cached_property
    def doc_ids(self) -> list[str]:
        return read_json(Path(f"{self.prefix}.docs.json"))

    def field(self, i: int, key: str):
        rec = self.records[i]
        doc, t = int(rec["doc"]), int(rec["offset"])
        start = max(0, t - self.max_context_tokens)
        if key == "context":
            return self.corpus.get(doc, offset=start, length=t - start).tolist()
        if key == "target":
            length = min(self.max_target_tokens, int(self.corpus.sequence_lengths[doc]) - t)
            return self.corpus.get(doc, offset=t, length=length).tolist()
        if key == "entropy":
            return float(rec["entropy"])
        if key == "bucket":
            return BUCKETS[rec["bucket"]] if rec["bucket"] >= 0 else None
        simple = {"doc": doc, "offset": t, "context_start": start}
        if key in simple:
            return simple[key]
        if key == "doc_id":
            return self.doc_ids[doc]
        raise KeyError(key)
