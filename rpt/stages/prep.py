"""Stage `prep`: corpus → documents (pretrain and RPT splits) → tokenizer → indexed tokens.

The tokenizer is a sentencepiece model trained on the corpus, unless the run already holds an imported HF
``tokenizer.json`` (``rpt hf_import``), which is then used as is.
"""

from __future__ import annotations

import hashlib
import logging

from data_prep.corpus import IngestStats, doc_id, iter_documents
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


def _user_splits(cfg, stats: IngestStats) -> dict[str, list[tuple[str, str]]]:
    splits = {"pretrain": [], "rpt": []}
    for did, text in iter_documents(cfg.data, stats):
        bucket = int(hashlib.sha256(did.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        splits["rpt" if bucket < cfg.data.rpt_fraction else "pretrain"].append((did, text))
    return splits


def run(ctx) -> dict:
    cfg, rd = ctx.cfg, ctx.rd
    stats = IngestStats()
    splits = _demo_splits(cfg) if cfg.data.source == "demo" else _user_splits(cfg, stats)
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
    if ctx.rt.is_main:
        for name, docs in splits.items():
            encoded = [(did, tok.encode(text)) for did, text in ctx.progress(docs, desc=f"tokenize {name}")]
            summary["splits"][name] = write_indexed(rd.data / name, encoded, tok.vocab_size)
        write_json(rd.data / "ingest_summary.json", stats.as_dict())
    ctx.barrier()
    summary["vocab_size"] = tok.vocab_size
    log.info("prep: %s", {k: (v["documents"], v["tokens"]) for k, v in summary["splits"].items()})
    return summary
