"""Corpus ingestion through `datasets`: planted bad records are counted and skipped, never fatal; parquet and
streaming sources; deterministic ids; duplicates dropped; indexed storage is reproducible byte for byte."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.corpus import IngestStats, doc_id, iter_documents
from data_prep.indexed import IndexedDocs, write_indexed
from tests.conftest import demo_data_cfg

GOOD = ["The first document.", "Second one, with unicode: é 数学.", "Third\n\nwith blank lines."]


def _ingest(source, **kw):
    stats = IngestStats()
    docs = list(iter_documents(demo_data_cfg(source=str(source), **kw), stats))
    return docs, stats


def test_jsonl_with_planted_bad_records(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": GOOD[0]}), json.dumps({"text": ""}), json.dumps({"body": "no text field"}),
             "{this is not json", json.dumps({"text": 42}), json.dumps({"text": GOOD[1]}),
             json.dumps({"text": "x" * 500}), json.dumps({"text": GOOD[0]}), json.dumps(["a", "list"]), "",
             json.dumps({"text": GOOD[2]})]
    data = "\n".join(lines).encode("utf-8") + b'\n{"text": "bad \xff\xfe bytes"}\n'
    path.write_bytes(data)
    docs, stats = _ingest(path, max_doc_chars=100)
    assert [t for _, t in docs] == GOOD
    assert stats.kept == 3 and stats.read == 11
    assert dict(stats.skipped) == {"empty": 1, "missing_field": 2, "bad_json": 1, "not_text": 1, "too_long": 1,
                                   "duplicate": 1, "not_utf8": 1}
    assert [d for d, _ in docs] == [doc_id(t) for t in GOOD]


@pytest.mark.parametrize("streaming", [False, True])
def test_sharded_ingestion_merges_to_the_single_process_result(tmp_path, streaming):
    """Each of 3 processes reads its own shard: together they read every record once, and in rank order, with
    duplicates across shards dropped, they hold exactly the documents of a one-process read."""
    path = tmp_path / "docs.parquet"
    texts = [f"document {i % 7}" if i % 5 else "" for i in range(40)]  # duplicates across shards, empties
    pq.write_table(pa.table({"text": texts}), path, row_group_size=5)
    single, single_stats = _ingest(path, streaming=streaming)
    shards = []
    for rank in range(3):
        stats = IngestStats()
        shards.append((list(iter_documents(demo_data_cfg(source=str(path), streaming=streaming), stats, rank, 3)),
                       stats))
    assert all(docs for docs, _ in shards)  # every process really read a part
    assert sum(stats.read for _, stats in shards) == single_stats.read == 40
    merged = list(dict.fromkeys(doc for docs, _ in shards for doc in docs))  # first copy wins, in rank order
    assert sorted(merged) == sorted(single) and len(merged) == 7
    if not streaming:  # contiguous shards: even the order is the single-process order
        assert merged == single


def test_parquet_and_streaming_give_the_same_documents(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": GOOD + [GOOD[1], None]}), path)
    eager, stats = _ingest(path, text_field="content")
    streamed, _ = _ingest(path, text_field="content", streaming=True)
    assert eager == streamed and [t for _, t in eager] == GOOD
    assert dict(stats.skipped) == {"duplicate": 1, "not_text": 1}


def test_txt_files_are_whole_documents_and_globs_work(tmp_path):
    for i, text in enumerate(GOOD):
        (tmp_path / f"d{i}.txt").write_text(text)
    docs, _ = _ingest(tmp_path / "*.txt")
    assert sorted(t for _, t in docs) == sorted(GOOD)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _ingest(tmp_path / "nothing" / "*.jsonl")


def test_indexed_storage_is_reproducible(tmp_path, tokenizer):
    docs = [(doc_id(t), tokenizer.encode(t)) for t in GOOD]
    first = write_indexed(tmp_path / "a" / "split", docs, tokenizer.vocab_size)
    second = write_indexed(tmp_path / "b" / "split", docs, tokenizer.vocab_size)
    assert first == second  # counts and sha256 of .bin/.idx/.docs.json
    read = IndexedDocs(tmp_path / "a" / "split")
    assert [read.tokens(i).tolist() for i in range(len(read))] == [ids for _, ids in docs]
    assert read.doc_ids == [d for d, _ in docs]
