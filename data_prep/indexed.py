"""Token storage in megatron-core's indexed dataset format (``.bin``/``.idx``), one document per entry.

Written as a stream (``IndexedWriter``: temp prefix, then rename) with a manifest holding counts and checksums;
the manifest is written last, so its presence means the pair is complete. Document ids are kept in a side file in
the same order. Several processes each write a part; ``IndexedDocs`` reads any of them back (memory-mapped), one
document at a time, so a reader never holds the split.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from rpt.rundir import read_json, write_json


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class IndexedWriter:
    """Streams documents into ``prefix.bin/.idx`` + ``prefix.docs.json`` (under a temporary name until ``close``),
    so a split never has to fit in memory."""

    def __init__(self, prefix: Path, vocab_size: int):
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.uint16 if vocab_size < 65500 else np.int32
        self._tmp = self.prefix.with_name(f".tmp-{os.getpid()}-{self.prefix.name}")
        self._builder = IndexedDatasetBuilder(f"{self._tmp}.bin", dtype=self.dtype)
        self.doc_ids: list[str] = []
        self.tokens = 0

    def add(self, doc_id: str, ids) -> None:
        self._builder.add_document(torch.as_tensor(ids, dtype=torch.int64), [len(ids)])
        self.doc_ids.append(doc_id)
        self.tokens += len(ids)

    def close(self) -> dict:
        """Finish the pair, move it into place, write the manifest last; returns the manifest."""
        self._builder.finalize(f"{self._tmp}.idx")
        for ext in (".bin", ".idx"):
            os.replace(f"{self._tmp}{ext}", f"{self.prefix}{ext}")
        write_json(Path(f"{self.prefix}.docs.json"), self.doc_ids)
        manifest = {
            "documents": len(self.doc_ids),
            "tokens": int(self.tokens),
            "dtype": np.dtype(self.dtype).name,
            "sha256": {ext: _sha256(Path(f"{self.prefix}{ext}")) for ext in (".bin", ".idx", ".docs.json")},
        }
        write_json(Path(f"{self.prefix}.manifest.json"), manifest)
        return manifest


def write_indexed(prefix: Path, docs, vocab_size: int) -> dict:
    """Write ``docs`` = iterable of (doc_id, token_ids) to ``prefix.bin/.idx`` + ``prefix.docs.json`` + manifest."""
    writer = IndexedWriter(prefix, vocab_size)
    for doc_id, ids in docs:
        writer.add(doc_id, ids)
    return writer.close()


def remove_indexed(prefix: Path) -> None:
    for ext in (".manifest.json", ".bin", ".idx", ".docs.json"):
        Path(f"{prefix}{ext}").unlink(missing_ok=True)


class IndexedDocs:
    """Read side: documents by index, with their ids."""

    def __init__(self, prefix: Path):
        manifest = Path(f"{prefix}.manifest.json")
        if not manifest.exists():
            raise FileNotFoundError(f"no finished indexed dataset at {prefix} (missing {manifest.name})")
        self.manifest = read_json(manifest)
        self.dataset = IndexedDataset(str(prefix))
        self.doc_ids: list[str] = json.loads(Path(f"{prefix}.docs.json").read_text())

    def __len__(self) -> int:
        return len(self.dataset)

    def tokens(self, i: int) -> np.ndarray:
        return np.asarray(self.dataset[i], dtype=np.int64)

    def __getitem__(self, i: int) -> np.ndarray:
        """Document ``i``'s tokens, read from the memory-mapped ``.bin`` (so ``IndexedDocs`` is a lazy sequence)."""
        return self.tokens(i)

    @property
    def lengths(self) -> np.ndarray:
        return self.dataset.sequence_lengths
