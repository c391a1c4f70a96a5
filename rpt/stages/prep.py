"""Stage `prep`: corpus → documents (pretrain and RPT splits) → tokenizer → indexed tokens.

The tokenizer is a sentencepiece model trained on the corpus, unless the run already holds an imported HF
``tokenizer.json`` (``rpt hf_import``), which is then used as is.
"""

from __future__ import annotations

import hashlib
import logging

import torch.distributed as dist

from data_prep.corpus import IngestStats, doc_id, iter_documents, log_summary, merge_shards
from data_prep.demo_corpus import generate_documents
from data_prep.indexed import write_indexed
from data_prep.tokenizer_train import train_tokenizer
from rpt.rundir import write_json
from rpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def _demo_splits(cfg) -> dict[str, list[tuple[str, str]]]:
    pre = generate_documents(cfg.data, cfg.data.num_pretrain_docs, cfg.data.worked_fraction, cfg.run.seed)
    rpt = generate_documents(cfg.data, cfg.data.num_rpt_docs, 0.0, cfg.run.seed + 1)
    return {"pretrain": [(doc_id(t), t) for t in pre], "rpt": [(doc_id(t), t) for t in rpt]}


def _all_gather(obj, world: int) -> list:
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _ingest(cfg, rt) -> tuple[list[tuple[str, str]], IngestStats]:
    """Every process reads its shard of the source; the shards are joined (and deduplicated) in rank order, so
    the result equals a single-process read."""
    stats = IngestStats()
    docs = list(iter_documents(cfg.data, stats, rt.rank, rt.world_size))
    if rt.world_size == 1:
        return docs, stats
    docs, stats = merge_shards(_all_gather((docs, stats), rt.world_size), cfg.data.max_docs)
    log_summary(stats)
    return docs, stats


def _encode(docs: list[tuple[str, str]], tok, rt, progress, desc: str) -> list[tuple[str, list[int]]]:
    """Tokenise ``docs`` spread over all processes (every world_size-th document each), back in corpus order."""
    mine = [(i, tok.encode(docs[i][1])) for i in progress(range(rt.rank, len(docs), rt.world_size), desc=desc)]
    parts = _all_gather(mine, rt.world_size) if rt.world_size > 1 else [mine]
    ids = dict(pair for part in parts for pair in part)
    return [(did, ids[i]) for i, (did, _) in enumerate(docs)]


def _user_splits(cfg, rt) -> tuple[dict[str, list[tuple[str, str]]], IngestStats]:
    splits = {"pretrain": [], "rpt": []}
    docs, stats = _ingest(cfg, rt)
    for did, text in docs:
        bucket = int(hashlib.sha256(did.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        splits["rpt" if bucket < cfg.data.rpt_fraction else "pretrain"].append((did, text))
    return splits, stats


def run(ctx) -> dict:
    cfg, rd = ctx.cfg, ctx.rd
    splits, stats = (_demo_splits(cfg), IngestStats()) if cfg.data.source == "demo" else _user_splits(cfg, ctx.rt)
    for name, docs in splits.items():
        if not docs:
            raise ValueError(f"prep: the {name} split is empty (source {cfg.data.source!r}, {stats.as_dict()})")
    summary = {"ingest": stats.as_dict(), "splits": {}}
    imported = (rd.tokenizer / "tokenizer.json").exists()  # from `rpt hf_import`: keep the model's tokenizer
    if ctx.rt.is_main and not imported:
        texts = [t for docs in splits.values() for _, t in docs]
        train_tokenizer(texts, rd.tokenizer, cfg.data.vocab_size, cfg.data.tokenizer_type)
    ctx.barrier()
    tok = Tokenizer.from_run(rd)
    for name, docs in splits.items():
        encoded = _encode(docs, tok, ctx.rt, ctx.progress, f"tokenize {name}")
        if ctx.rt.is_main:
            summary["splits"][name] = write_indexed(rd.data / name, encoded, tok.vocab_size)
    if ctx.rt.is_main:
        write_json(rd.data / "ingest_summary.json", stats.as_dict())
    ctx.barrier()
    summary["vocab_size"] = tok.vocab_size
    log.info("prep: %s", {k: (v["documents"], v["tokens"]) for k, v in summary["splits"].items()})
    return summary
