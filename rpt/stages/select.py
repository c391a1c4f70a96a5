"""Stage `select`: score the RPT split with the proxy (the pretrained base) and choose positions.

Writes ``positions/entropy.npz`` (per-token top-k entropy), ``positions/train.jsonl``,
``positions/heldout.jsonl`` and an entropy histogram in ``report/``.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from data_prep.entropy import score_corpus
from data_prep.indexed import IndexedDocs
from data_prep.selection import choose_training_positions, heldout_positions, is_heldout, position_record
from rpt.analysis.plots import entropy_histogram
from rpt.model.loading import load_eval_model
from rpt.rundir import atomic_path, write_jsonl
from rpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    sc = cfg.select
    if sc.proxy == "pretrain":
        rd.require("pretrain")
    tok = Tokenizer.from_run(rd)
    model = load_eval_model(cfg.model, rt, rd, sc.proxy, cfg.model.vocab_size or tok.vocab_size)
    corpus = IndexedDocs(rd.data / "rpt")
    docs = [corpus.tokens(i) for i in range(len(corpus))]
    entropies = score_corpus(model, docs, rd.positions / "entropy_shards", sc.shard_docs, cfg.data.seq_length,
                             sc.top_k, sc.batch_size, rt.device, rt.dp_rank, rt.dp_size, rt.is_main, ctx.progress)
    if not rt.is_main:
        ctx.barrier()
        return {}
    heldout = [is_heldout(d, sc.heldout_fraction) for d in corpus.doc_ids]
    train_idx = [i for i, h in enumerate(heldout) if not h]
    rng = np.random.default_rng(cfg.run.seed)
    chosen = choose_training_positions([entropies[i] for i in train_idx], sc, rng)
    train_rows = [position_record(corpus.doc_ids[i], docs[i], int(t), float(entropies[i][t]), sc)
                  for i, ts in zip(train_idx, chosen, strict=True) for t in ts]
    heldout_rows = []
    for i in (i for i, h in enumerate(heldout) if h):
        heldout_rows += [position_record(corpus.doc_ids[i], docs[i], int(t), float(entropies[i][t]), sc)
                         for t in heldout_positions(entropies[i], sc)]
    rd.positions.mkdir(parents=True, exist_ok=True)
    with atomic_path(rd.positions / "entropy.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, entropy=np.concatenate(entropies).astype(np.float16),
                                doc_lengths=np.array([len(d) for d in docs]))
    write_jsonl(rd.positions / "train.jsonl", train_rows)
    write_jsonl(rd.positions / "heldout.jsonl", heldout_rows)
    all_values = np.concatenate([e[~np.isnan(e)] for e in entropies])
    entropy_histogram(all_values, sc.difficulty_thresholds, rd.report / "entropy_hist.png")
    ctx.barrier()
    if not train_rows:
        raise ValueError(f"select: no training position passed mode={sc.mode} threshold={sc.threshold}; "
                         f"entropy range {all_values.min():.3f}..{all_values.max():.3f}")
    summary = {
        "positions_scored": int(all_values.size), "train_positions": len(train_rows),
        "heldout_positions": len(heldout_rows), "fraction_kept": len(train_rows) / max(1, sum(
            max(0, len(docs[i]) - sc.min_context_tokens) for i in train_idx)),
        "heldout_buckets": dict(Counter(r["bucket"] for r in heldout_rows)),
        "entropy_mean": float(all_values.mean()), "entropy_p80": float(np.quantile(all_values, 0.8)),
        "mode": sc.mode,
    }
    log.info("select: %s", summary)
    return summary
