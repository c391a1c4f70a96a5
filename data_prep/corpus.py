"""Corpus ingestion through ``datasets``: local jsonl/json/parquet/txt files or a hub dataset, streaming or not,
sharded across processes (each reads its shard; the `prep` stage merges them in rank order).

Every record becomes a document with a deterministic id (a hash of its text), exact duplicates are dropped,
and bad records (missing field, not text, empty, too long) are counted and skipped, never fatal, with a
summary logged at the end and kept in the prep manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from rpt.sources import local_files

log = logging.getLogger(__name__)

# .jsonl is read line by line through the text builder and parsed per record, so one malformed line is a
# counted bad record instead of an exception that loses the whole file
_BUILDERS = {".jsonl": "text", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def doc_id(text: str) -> str:
    """Content hash: the same document always gets the same id, whatever the file order."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class IngestStats:
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped)}


def _load(data_cfg):
    import datasets

    source = data_cfg.source
    local = local_files(source, _BUILDERS, "data.source")
    if local:
        files, ext = local
        builder = _BUILDERS[ext]
        kwargs = {"parquet": {}, "json": {"encoding_errors": "replace"},
                  "text": {"encoding_errors": "replace", "sample_by": "line" if ext == ".jsonl" else "document"}}
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=data_cfg.streaming,
                                   **kwargs[builder])
        return ds, ext
    # a hub dataset name (needs network access and, for gated sets, a token)
    return datasets.load_dataset(source, data_cfg.hub_config, split=data_cfg.hub_split,
                                 streaming=data_cfg.streaming), None


def _records(dataset, ext: str | None, stats: IngestStats):
    """Records as dicts; jsonl lines are parsed here (blank lines ignored, malformed ones counted)."""
    for row in dataset:
        if ext != ".jsonl":
            yield row
            continue
        line = row["text"]
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            stats.read += 1
            stats.skipped["bad_json"] += 1
            continue
        yield record if isinstance(record, dict) else {"__not_an_object__": record}


def iter_documents(data_cfg, stats: IngestStats, rank: int = 0, world: int = 1) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` for every good, first-seen record of the configured source (of this process's
    shard when ``world`` > 1: ``datasets.distributed.split_dataset_by_node``, contiguous for files on disk)."""
    dataset, ext = _load(data_cfg)
    if world > 1:
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
    field_name = "text" if ext == ".txt" else data_cfg.text_field
    seen: set[str] = set()
    for record in _records(dataset, ext, stats):
        if data_cfg.max_docs is not None and stats.kept >= data_cfg.max_docs:
            break
        stats.read += 1
        text = record.get(field_name) if isinstance(record, dict) else None
        if field_name not in record:
            stats.skipped["missing_field"] += 1
        elif not isinstance(text, str):
            stats.skipped["not_text"] += 1
        elif not text.strip():
            stats.skipped["empty"] += 1
        elif len(text) > data_cfg.max_doc_chars:
            stats.skipped["too_long"] += 1
        elif "\ufffd" in text:  # invalid UTF-8 bytes were decoded with errors="replace"
            stats.skipped["not_utf8"] += 1
        else:
            did = doc_id(text)
            if did in seen:
                stats.skipped["duplicate"] += 1
                continue
            seen.add(did)
            stats.kept += 1
            yield did, text
    log_summary(stats)


def log_summary(stats: IngestStats) -> None:
    if stats.skipped:
        log.warning("corpus: read %d records, kept %d, skipped %s", stats.read, stats.kept, dict(stats.skipped))
    else:
        log.info("corpus: read %d records, kept %d", stats.read, stats.kept)
