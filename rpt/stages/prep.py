"""Stage `prep`: corpus → documents (pretrain and RPT splits) → tokenizer → indexed tokens.

A user corpus is streamed, never held in memory: the sentencepiece tokenizer is trained on the first
``data.tokenizer_sample_docs`` good documents (unless the run holds an imported HF ``tokenizer.json`` from
``rpt hf_import``, used as is); then every process reads its shard of the source, routes each document to a split
by a hash of its id, tokenises it and streams it into its own part files; finally rank 0 merges the parts in rank
order, dropping documents an earlier part already holds and applying ``data.max_docs`` to the whole, so the result
equals a one-process run. The small embedded demo corpus is written by rank 0 directly.

Last, rank 0 splits the RPT documents into train / validation / test (by document id; the demo by construction) and
measures how much of each held-out document the training splits hold (``data_prep/heldout_overlap.py``:
``data/rpt_doc_splits.npy``, ``data/contamination.json``).

A run that starts from an imported model (``select.proxy=hf`` or ``rpt.init_from=hf``) must have imported it first
(its tokenizer is the run's), and usually routes every document to the RPT split (``data.rpt_fraction=1.0``: the
pretraining split may then be empty). An empty ``data.source`` is refused with the override to give.
"""

from __future__ import annotations

import hashlib
import itertools
import logging

from data_prep.corpus import IngestStats, doc_id, iter_documents, log_summary
from data_prep.demo_corpus import generate_documents
from data_prep.doc_splits import TEST, TRAIN, VALIDATION
from data_prep.heldout_overlap import split_and_measure
from data_prep.indexed import IndexedDocs, IndexedWriter, remove_indexed, write_indexed
from data_prep.tokenizer_train import train_tokenizer
from rpt.distributed import broadcast_from_main, gather_objects
from rpt.errors import Refusal
from rpt.rundir import write_json
from rpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("pretrain", "rpt")


def _split_of(did: str, rpt_fraction: float) -> str:
    if rpt_fraction >= 1.0:  # a run that imports its base pretrains nothing: every document is for RPT
        return "rpt"
    bucket = int(hashlib.sha256(did.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "rpt" if bucket < rpt_fraction else "pretrain"


def _write_demo(cfg, rd, ctx) -> tuple[dict, list[int]]:
    """The demo's splits by construction: RPT-train documents from the training problems, validation and test
    documents from the held-out problems (``data_prep/demo_corpus.py``). Returns the manifests and the RPT split's
    document splits."""
    d, seed = cfg.data, cfg.run.seed
    heldout = round(d.num_rpt_docs * d.heldout_fraction)
    validation = round(heldout * d.validation_fraction)
    pre = generate_documents(d, d.num_pretrain_docs, d.worked_fraction, seed)
    rpt_train = generate_documents(d, d.num_rpt_docs - heldout, 0.0, seed + 1)
    rpt = rpt_train + generate_documents(d, heldout, 0.0, seed + 2, pool="heldout")
    splits = [TRAIN] * len(rpt_train) + [VALIDATION] * validation + [TEST] * (heldout - validation)
    if not (rd.tokenizer / "tokenizer.json").exists():
        train_tokenizer(pre + rpt, rd.tokenizer, cfg.data.vocab_size, cfg.data.tokenizer_type, cfg.data.digit_group)
    tok = Tokenizer.from_run(rd)
    manifests = {name: write_indexed(rd.data / name, ((doc_id(t), tok.encode(t))
                                                      for t in ctx.progress(texts, desc=f"tokenize {name}")),
                                     tok.vocab_size)
                 for name, texts in (("pretrain", pre), ("rpt", rpt))}
    return manifests, splits


def _write_part(cfg, rd, ctx, tok) -> tuple[IngestStats, dict]:
    """This process's shard of the source into ``data/parts/<split>.rank<r>``, plus the split of every document
    in stream order (``<r>.order``: one byte per document, so the merge can replay the stream). A single process
    writes the final ``data/<split>`` directly (its stream is already deduplicated and capped); returns the
    ingest counts and the manifests written."""
    rt, stats = ctx.rt, IngestStats()
    parts = rd.data / "parts"
    prefix = {name: rd.data / name if rt.world_size == 1 else parts / f"{name}.rank{rt.rank}" for name in SPLITS}
    writers = {name: IndexedWriter(prefix[name], tok.vocab_size) for name in SPLITS}
    order = bytearray()
    docs = iter_documents(cfg.data, stats, rt.rank, rt.world_size)
    for did, text in ctx.progress(docs, desc=f"tokenize (rank {rt.rank})"):
        split = _split_of(did, cfg.data.rpt_fraction)
        writers[split].add(did, tok.encode(text))
        order.append(SPLITS.index(split))
    manifests = {name: writer.close() for name, writer in writers.items()}
    if rt.world_size > 1:
        (parts / f"{rt.rank}.order").write_bytes(bytes(order))
    return stats, manifests


def _merge_parts(cfg, rd, world: int, shard_stats: list[IngestStats], vocab_size: int) -> tuple[dict, IngestStats]:
    parts = rd.data / "parts"
    writers = {name: IndexedWriter(rd.data / name, vocab_size) for name in SPLITS}
    stats, seen = IngestStats(), set()
    for s in shard_stats:
        stats.merge(s)
    for rank in range(world):
        readers = {name: IndexedDocs(parts / f"{name}.rank{rank}") for name in SPLITS}
        cursor = dict.fromkeys(SPLITS, 0)
        for code in (parts / f"{rank}.order").read_bytes():
            name = SPLITS[code]
            reader, index = readers[name], cursor[name]
            cursor[name] += 1
            did = reader.doc_ids[index]
            if did in seen:
                stats.skipped["duplicate"] += 1
            elif cfg.data.max_docs is None or len(seen) < cfg.data.max_docs:
                seen.add(did)
                writers[name].add(did, reader.tokens(index))
    stats.kept = len(seen)
    manifests = {name: writer.close() for name, writer in writers.items()}
    for rank, name in itertools.product(range(world), SPLITS):
        remove_indexed(parts / f"{name}.rank{rank}")
        (parts / f"{rank}.order").unlink(missing_ok=True)
    return manifests, stats


def _train_tokenizer_on_sample(cfg, rd) -> None:
    sample = IngestStats()
    texts = list(itertools.islice((text for _, text in iter_documents(cfg.data, sample)),
                                  cfg.data.tokenizer_sample_docs))
    if not texts:  # nothing to train on: say why, before sentencepiece fails on an empty input
        raise Refusal(_empty_split_error(cfg, "the corpus", sample))
    train_tokenizer(texts, rd.tokenizer, cfg.data.vocab_size, cfg.data.tokenizer_type, cfg.data.digit_group)


def _check_import(cfg, rd) -> None:
    """A run that starts from an imported model must tokenise with that model's tokenizer: refuse to train a new
    one (whose ids would mean nothing to the imported weights) when `hf_import` has not run."""
    users = [key for key, value in (("select.proxy", cfg.select.proxy), ("rpt.init_from", cfg.rpt.init_from))
             if value == "hf"]
    if users and not (rd.tokenizer / "tokenizer.json").exists():
        raise Refusal(f"prep: {' and '.join(f'{k}=hf' for k in users)} start from an imported model, but "
                         f"{rd.tokenizer} holds no imported tokenizer.json; run `rpt hf_import run.name="
                         f"{rd.path.name} hf.path=/path/to/hf/checkpoint` (with this run's experiment= or model=) "
                         f"first")


def _empty_split_error(cfg, what: str, stats: IngestStats) -> str:
    error = f"prep: {what} has no usable document (source {cfg.data.source!r}, {stats.as_dict()})"
    if stats.missing_fields:
        wanted = f"data.text_template={cfg.data.text_template!r}" if cfg.data.text_template else \
            f"data.text_field={cfg.data.text_field!r}"
        error += (f"; records lack the field(s) {sorted(stats.missing_fields)} that {wanted} names; the first "
                  f"record has the fields {stats.fields_seen}: set data.text_field=<one of them>")
    return error


def run(ctx) -> dict:
    cfg, rd, rt = ctx.cfg, ctx.rd, ctx.rt
    if not cfg.data.source:  # conf/data/jsonl.yaml leaves it empty: a corpus must be named, never a silent default
        raise Refusal("prep: data.source is empty; name the corpus: data.source=/path/to/docs.jsonl (jsonl, json, "
                         "parquet or txt files, a glob, or a hub dataset name)")
    _check_import(cfg, rd)
    summary: dict = {"splits": {}}
    demo_splits = None  # the demo assigns its document splits by construction; a user corpus by document id
    if cfg.data.source == "demo":
        if rt.is_main:
            summary["splits"], demo_splits = _write_demo(cfg, rd, ctx)
        stats = IngestStats()
    else:
        imported = (rd.tokenizer / "tokenizer.json").exists()  # from `rpt hf_import`: keep the model's tokenizer
        if rt.is_main and not imported:
            _train_tokenizer_on_sample(cfg, rd)
        ctx.barrier()
        tok = Tokenizer.from_run(rd)
        stats, summary["splits"] = _write_part(cfg, rd, ctx, tok)
        if rt.world_size > 1:
            shard_stats = gather_objects(stats, data_parallel=False)
            if rt.is_main:
                summary["splits"], stats = _merge_parts(cfg, rd, rt.world_size, shard_stats, tok.vocab_size)
                log_summary(stats)
    error = None
    if rt.is_main:
        write_json(rd.data / "ingest_summary.json", stats.as_dict())
        wanted = [name for name in SPLITS if name != "pretrain" or cfg.data.rpt_fraction < 1.0]
        empty = [name for name in wanted if not summary["splits"][name]["documents"]]
        if empty:
            error = _empty_split_error(cfg, f"the {empty[0]} split", stats)
        else:
            summary["contamination"] = split_and_measure(cfg.data, rd.data, Tokenizer.from_run(rd), demo_splits)
    error = broadcast_from_main(error)  # every rank raises the same error instead of waiting for rank 0 forever
    if error:
        raise Refusal(error)
    summary["ingest"] = stats.as_dict()
    summary["vocab_size"] = Tokenizer.from_run(rd).vocab_size
    log.info("prep: %s", {k: (v["documents"], v["tokens"]) for k, v in summary["splits"].items()})
    return summary
