"""`prep`'s last step: give every RPT document its split and measure what the training splits hold of the held-out
ones (``data_prep/contamination.py``), so that a held-out result is known to be held out by content.

The training side is every pretraining document and every RPT-train document (both are trained on); the held-out
side is the validation and the test documents, measured separately. With ``data.decontaminate`` the contaminated
held-out documents are marked ``DROPPED`` and no stage reads them. Texts are decoded from the indexed datasets, so
a streamed user corpus is read once more here, document by document, never held in memory whole.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from data_prep.contamination import TrainingIndex, measure_overlap
from data_prep.doc_splits import DROPPED, HELDOUT_SPLITS, TRAIN, split_by_id, write_doc_splits
from data_prep.indexed import IndexedDocs
from rpt.rundir import read_json, write_json

log = logging.getLogger(__name__)
CONTAMINATION = "contamination.json"


def _texts(docs: IndexedDocs, indices, tok):
    return (tok.decode(docs.tokens(int(i)).tolist()) for i in indices)


def split_and_measure(data_cfg, data_dir: Path, tok, splits: np.ndarray | None = None) -> dict:
    """Write ``rpt_doc_splits.npy`` (``splits``, or by document id) and ``contamination.json``; return the latter."""
    rpt = IndexedDocs(data_dir / "rpt")
    if splits is None:
        splits = np.fromiter((split_by_id(d, data_cfg.heldout_fraction, data_cfg.validation_fraction)
                              for d in rpt.doc_ids), dtype=np.int8, count=len(rpt))
    splits = np.asarray(splits, dtype=np.int8).copy()
    manifest = Path(f"{data_dir / 'pretrain'}.manifest.json")  # empty when every document is for RPT
    pretrain = IndexedDocs(data_dir / "pretrain") if manifest.exists() and read_json(manifest)["documents"] else None
    training = itertools.chain(_texts(pretrain, range(len(pretrain)), tok) if pretrain else (),
                               _texts(rpt, np.flatnonzero(splits == TRAIN), tok))
    index = TrainingIndex(training, data_cfg.contamination_ngram)
    report = {"ngram": data_cfg.contamination_ngram, "training_documents": (len(pretrain) if pretrain else 0)
              + int((splits == TRAIN).sum()), "decontaminate": data_cfg.decontaminate, "splits": {}}
    for name, code in HELDOUT_SPLITS.items():
        members = np.flatnonzero(splits == code)
        overlap = measure_overlap(_texts(rpt, members, tok), index, data_cfg.near_duplicate)
        report["splits"][name] = overlap.summary(data_cfg.contamination_ngram, data_cfg.near_duplicate)
        dirty = members[np.asarray(overlap.contaminated, dtype=bool)]
        if data_cfg.decontaminate:
            splits[dirty] = DROPPED
        report["splits"][name]["dropped"] = int(len(dirty)) if data_cfg.decontaminate else 0
        log.info("prep: %s split: %d of %d documents share a %d-gram with training%s", name, len(dirty),
                 len(members), data_cfg.contamination_ngram, " (dropped)" if data_cfg.decontaminate else "")
    write_doc_splits(data_dir, splits)
    write_json(data_dir / CONTAMINATION, report)
    return report
