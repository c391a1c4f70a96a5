"""Corpus ingestion through ``datasets``: local jsonl/json/parquet/txt files or a hub dataset, streaming or not,
sharded across processes (each reads its shard; the `prep` stage merges them in rank order).

A record's text is its ``data.text_field``, or ``data.text_template`` filled from several of its fields (OmniMATH:
``"{problem}\\n\\n{solution}"``). Every record becomes a document with a deterministic id (a hash of its text), exact
duplicates are dropped, and bad records (missing field, not text, empty, too long, not valid Unicode: undecodable
bytes or an escaped lone surrogate such as ``"\\ud800"`` in JSON) are counted and skipped, never fatal, with a
summary logged at the end and kept in the prep manifest (the missing fields by name, and the fields the first
record has, so a misnamed field is plain to see).
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
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
    missing_fields: Counter = field(default_factory=Counter)  # field name -> records without it
    fields_seen: list[str] = field(default_factory=list)  # the fields of the first record read

    def merge(self, other: IngestStats) -> None:
        """Add another process's counts (``kept`` is recounted by the caller)."""
        self.read += other.read
        self.skipped.update(other.skipped)
        self.missing_fields.update(other.missing_fields)
        self.fields_seen = self.fields_seen or other.fields_seen

    def as_dict(self) -> dict:
        out = {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped)}
        if self.missing_fields:
            out["missing_fields"] = dict(self.missing_fields)
            out["fields_seen"] = self.fields_seen
        return out


def template_fields(template: str) -> list[str]:
    """The record fields a ``data.text_template`` names, in order (``{{`` and ``}}`` are literal braces)."""
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name is not None))


def is_valid_unicode(text: str) -> bool:
    """False for text that cannot be written as UTF-8: lone surrogates (JSON ``"\\ud800"``) and bytes that were
    undecodable (read with ``errors="replace"``, so they became U+FFFD)."""
    if "\ufffd" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def record_text(record: dict, field_name: str, template: str | None, stats: IngestStats) -> str | None:
    """The document text of a record, or None after counting why it has none (``missing_field``, ``not_text``)."""
    names = template_fields(template) if template is not None else [field_name]
    missing = [name for name in names if name not in record]
    if missing:
        stats.skipped["missing_field"] += 1
        stats.missing_fields.update(missing)
        return None
    values = {name: record[name] for name in names}
    if not all(isinstance(v, str) for v in values.values()):
        stats.skipped["not_text"] += 1
        return None
    return template.format(**values) if template is not None else values[field_name]


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
    field_name, template = ("text", None) if ext == ".txt" else (data_cfg.text_field, data_cfg.text_template)
    seen: set[str] = set()
    for record in _records(dataset, ext, stats):
        if data_cfg.max_docs is not None and stats.kept >= data_cfg.max_docs:
            break
        stats.read += 1
        if not stats.fields_seen:
            stats.fields_seen = sorted(map(str, record))
        text = record_text(record, field_name, template, stats)
        if text is None:
            continue
        if not text.strip():
            stats.skipped["empty"] += 1
        elif len(text) > data_cfg.max_doc_chars:
            stats.skipped["too_long"] += 1
        elif not is_valid_unicode(text):
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
