"""Token storage in megatron-core's indexed dataset format (``.bin``/``.idx``), one document per entry.

Written atomically (temp prefix, then rename) with a manifest holding counts and checksums; the manifest is
written last, so its presence means the pair is complete. Document ids are kept in a side file in the same order.
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


def write_indexed(prefix: Path, docs: list[tuple[str, list[int]]], vocab_size: int) -> dict:
    """Write ``docs`` = [(doc_id, token_ids)] to ``prefix.bin/.idx`` + ``prefix.docs.json`` + manifest."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab_size < 65500 else np.int32
    tmp = prefix.with_name(f".tmp-{os.getpid()}-{prefix.name}")
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    for _, ids in docs:
        builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
    builder.finalize(f"{tmp}.idx")
    for ext in (".bin", ".idx"):
        os.replace(f"{tmp}{ext}", f"{prefix}{ext}")
    write_json(Path(f"{prefix}.docs.json"), [d for d, _ in docs])
    manifest = {
        "documents": len(docs),
        "tokens": int(sum(len(ids) for _, ids in docs)),
        "dtype": np.dtype(dtype).name,
        "sha256": {ext: _sha256(Path(f"{prefix}{ext}")) for ext in (".bin", ".idx", ".docs.json")},
    }
    write_json(Path(f"{prefix}.manifest.json"), manifest)
    return manifest


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
