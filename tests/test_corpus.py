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
    with pytest.raises(ValueError, match="matches no file"):
        _ingest(tmp_path / "nothing" / "*.jsonl")


def test_corpus_mistakes_say_what_is_wrong_and_the_way_out(tmp_path):
    """A directory (suggest its files), empty files, and a text field no record has (list the fields seen) are
    refused with a message that names the fix, instead of `datasets`' or sentencepiece's tracebacks."""
    from types import SimpleNamespace

    from rpt.errors import Refusal
    from rpt.rundir import RunDir
    from rpt.stages.prep import _train_tokenizer_on_sample

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_text(json.dumps({"text": GOOD[0]}) + "\n")
    with pytest.raises(Refusal, match=r"names the directory .*dir', not files: give the files, e\.g\. "
                                      r"data\.source='.*dir/\*\.jsonl'"):
        _ingest(tmp_path / "dir")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(Refusal, match="the file is empty"):
        _ingest(tmp_path / "empty.jsonl")
    (tmp_path / "body.jsonl").write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(GOOD)))
    cfg = SimpleNamespace(data=demo_data_cfg(source=str(tmp_path / "body.jsonl")))
    with pytest.raises(Refusal, match=r"lack the field\(s\) \['text'\].*the fields \['body', 'id'\]: set "
                                      r"data\.text_field=<one of them>"):
        _train_tokenizer_on_sample(cfg, RunDir(tmp_path, "r"))
    assert not (tmp_path / "r").exists()


def test_indexed_storage_is_reproducible(tmp_path, tokenizer):
    docs = [(doc_id(t), tokenizer.encode(t)) for t in GOOD]
    first = write_indexed(tmp_path / "a" / "split", docs, tokenizer.vocab_size)
    second = write_indexed(tmp_path / "b" / "split", docs, tokenizer.vocab_size)
    assert first == second  # counts and sha256 of .bin/.idx/.docs.json
    read = IndexedDocs(tmp_path / "a" / "split")
    assert [read.tokens(i).tolist() for i in range(len(read))] == [ids for _, ids in docs]
    assert read.doc_ids == [d for d, _ in docs]


def test_a_record_that_is_not_valid_unicode_is_counted_and_skipped(tmp_path):
    """A JSON-escaped lone surrogate decodes to a str that UTF-8 cannot encode (it used to stop `prep` in doc_id);
    among good records it is one counted bad record, and the good ones all survive."""
    path = tmp_path / "docs.jsonl"
    texts = [GOOD[0], "lone \ud800 surrogate", GOOD[1], "a pair is fine: \U0001f642 but not \udfff alone", GOOD[2]]
    lines = [json.dumps({"text": t}) for t in texts]
    assert "\\ud800" in lines[1]  # written as the escape a JSON file would hold
    path.write_text("\n".join(lines) + "\n")
    docs, stats = _ingest(path)
    assert [t for _, t in docs] == GOOD
    assert stats.read == 5 and stats.kept == 3 and dict(stats.skipped) == {"not_utf8": 2}


def test_text_template_builds_a_document_from_several_fields(tmp_path):
    """OmniMATH-style records: problem and solution joined by the template; a record missing a named field is counted
    under that field's name (and the fields the first record has are kept), a non-text field is `not_text`."""
    path = tmp_path / "omni.jsonl"
    records = [{"problem": "What is 2+2?", "solution": "It is $4$.", "domain": "arith"},
               {"problem": "Only a problem."},
               {"problem": "Numbers?", "solution": 7},
               {"problem": "Sum of 1..3?", "solution": "6"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    docs, stats = _ingest(path, text_template="{problem}\n\n{solution}")
    assert [t for _, t in docs] == ["What is 2+2?\n\nIt is $4$.", "Sum of 1..3?\n\n6"]
    assert dict(stats.skipped) == {"missing_field": 1, "not_text": 1}
    summary = stats.as_dict()
    assert summary["missing_fields"] == {"solution": 1} and summary["fields_seen"] == ["domain", "problem", "solution"]
    plain, _ = _ingest(path, text_field="problem")  # the same file without the template: one field only
    assert [t for _, t in plain][:2] == ["What is 2+2?", "Only a problem."]


def test_a_template_field_no_record_has_is_named_in_the_prep_error(tmp_path):
    from rpt.stages.prep import _empty_split_error

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(3)) + "\n")
    cfg = demo_data_cfg(source=str(path), text_template="{problem}\n\n{solution}")
    stats = IngestStats()
    assert not list(iter_documents(cfg, stats))
    error = _empty_split_error(type("Cfg", (), {"data": cfg})(), "rpt", stats)
    assert "['problem', 'solution']" in error and "['answer', 'question']" in error and "text_template" in error


@pytest.mark.parametrize("template", ["no fields at all", "{}", "{0}", "{problem", "{a.b}"])
def test_a_text_template_without_named_fields_is_refused(template):
    from rpt.config import DataConfig

    with pytest.raises(ValueError, match="data.text_template"):
        DataConfig(text_template=template)


def test_prep_without_a_corpus_is_a_clear_error():
    """`data=jsonl` without data.source used to fall back to the demo corpus silently (OmegaConf keeps a default
    under `???`); now the empty source stops prep with the override to give."""
    from types import SimpleNamespace

    from rpt.stages.prep import run

    with pytest.raises(ValueError, match="data.source=/path/to/docs.jsonl"):
        run(SimpleNamespace(cfg=SimpleNamespace(data=demo_data_cfg(source="")), rd=None, rt=None))


def test_rpt_fraction_one_routes_every_document_to_rpt():
    """A run that imports its base pretrains nothing: data.rpt_fraction=1.0 sends every document to the RPT split
    (and prep then accepts an empty pretraining split), where 0.5 splits them."""
    from rpt.stages.prep import _split_of

    ids = [doc_id(f"document {i}") for i in range(200)]
    assert {_split_of(d, 1.0) for d in ids} == {"rpt"}
    assert {_split_of(d, 0.5) for d in ids} == {"rpt", "pretrain"}
