"""Which documents of the RPT split train and which are held out, decided once by `prep`.

Three splits, as any evaluation a reviewer accepts needs: ``train`` (RPT's training positions), ``validation``
(validation during training and any choice of a setting) and ``test`` (evaluated once by `eval`, what a report
states). A document's split follows from a hash of its content id, so it does not depend on file order or on the
number of processes; the demo corpus assigns its splits by construction instead (its held-out documents are drawn
from problems no training split holds). `prep` writes the assignment to ``data/rpt_doc_splits.npy`` (one int8 per
document of ``data/rpt``), with ``DROPPED`` for held-out documents that ``data.decontaminate`` removed because the
training splits contain them; `select` reads it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from rpt.rundir import atomic_path

TRAIN, VALIDATION, TEST, DROPPED = 0, 1, 2, -1
HELDOUT_SPLITS = {"validation": VALIDATION, "test": TEST}
FILE = "rpt_doc_splits.npy"


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_by_id(doc_id: str, heldout_fraction: float, validation_fraction: float) -> int:
    """``heldout_fraction`` of the documents are held out; ``validation_fraction`` of those validate, the rest test."""
    if _unit("heldout:" + doc_id) >= heldout_fraction:
        return TRAIN
    return VALIDATION if _unit("validation:" + doc_id) < validation_fraction else TEST


def write_doc_splits(data_dir: Path, splits: np.ndarray) -> None:
    with atomic_path(Path(data_dir) / FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(splits, dtype=np.int8), allow_pickle=False)


def read_doc_splits(data_dir: Path, documents: int) -> np.ndarray:
    path = Path(data_dir) / FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this run's data was prepared before documents were split into "
                                f"train/validation/test; rerun `rpt prep` (force=true)")
    splits = np.load(path, allow_pickle=False)
    if len(splits) != documents:
        raise ValueError(f"{path} holds {len(splits)} splits for {documents} documents; rerun `rpt prep` (force=true)")
    return splits
