"""Stage `select`: score the RPT split with the proxy (the pretrained base, or the separate smaller model of stage
`proxy`) and choose positions; held-out positions are bucketed by the evaluated base's entropy (the proxy's when it
is the base; else a second scoring, ``positions/entropy_shards_heldout``).

Streams the corpus: scoring reads one shard of documents at a time from the indexed dataset and stores its
entropies (``positions/entropy_shards/``, ``data_prep/entropy.py``); selection then passes over the stored shards
(``data_prep/select_passes.py``) and appends the chosen positions to ``positions/train.npy``,
``positions/validation.npy`` and ``positions/test.npy`` (the document splits `prep` made) by reference
(``rpt/positions.py``), ``positions/positions.json`` last, and an entropy histogram in ``report/``. Memory stays
one shard, however large the corpus.
"""

from __future__ import annotations

import logging

from data_prep.doc_splits import read_doc_splits
from data_prep.entropy import score_corpus
from data_prep.indexed import IndexedDocs
from data_prep.select_passes import select_positions
from rpt.analysis.plots import entropy_histogram
from rpt.model.footprint import model_vocab
from rpt.model.loading import load_eval_model
from rpt.positions import write_meta
from rpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def _score(ctx, source: str, corpus, out_dir):
    """Entropy shards of ``corpus`` under ``source``'s model (``proxy``: the separate proxy's shape)."""
    cfg, rt, rd, sc = ctx.cfg, ctx.rt, ctx.rd, ctx.cfg.select
    if source in ("pretrain", "proxy"):
        rd.require(source)
    model_cfg = cfg.proxy.model_config(cfg.model) if source == "proxy" else cfg.model
    tok = Tokenizer.from_run(rd)
    model = load_eval_model(model_cfg, rt, rd, source, model_vocab(model_cfg, tok.vocab_size))
    return score_corpus(model, corpus, out_dir, sc.shard_docs, cfg.data.seq_length, sc.top_k, sc.batch_size,
                        rt.device, rt.dp_rank, rt.dp_size, rt.is_main, ctx.progress,
                        overlap=sc.overlap(cfg.data.seq_length))


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    sc = cfg.select
    corpus = IndexedDocs(rd.data / "rpt")
    overlap = sc.overlap(cfg.data.seq_length)
    shards = _score(ctx, sc.proxy, corpus, rd.positions / "entropy_shards")
    heldout_shards = None  # held-out positions are bucketed by the evaluated base, the proxy's unless separate
    if sc.bucket_source() != sc.proxy:
        heldout_shards = _score(ctx, sc.bucket_source(), corpus, rd.positions / "entropy_shards_heldout")
    if not rt.is_main:
        ctx.barrier()
        return {}
    doc_split = read_doc_splits(rd.data, len(corpus))
    selected = select_positions(shards, doc_split, sc, cfg.run.seed, rd.positions, heldout_shards)
    write_meta(rd.positions, corpus.manifest, sc.max_context_tokens, sc.max_target_tokens,
               {"train": selected.train, **selected.heldout})
    entropy_histogram(*selected.histogram, sc.difficulty_thresholds, rd.report / "entropy_hist.png")
    ctx.barrier()
    if not selected.train:
        raise ValueError(f"select: no training position passed mode={sc.mode} threshold={sc.threshold}; "
                         f"entropy range {selected.entropy_min:.3f}..{selected.entropy_max:.3f}")
    summary = {
        "positions_scored": selected.scored, "train_positions": selected.train, "heldout_positions": selected.heldout,
        "fraction_kept": selected.train / max(1, selected.trainable),
        "heldout_buckets": {name: dict(b) for name, b in selected.heldout_buckets.items()},
        "entropy_mean": selected.entropy_sum / selected.scored, "entropy_p80": selected.entropy_p80, "mode": sc.mode,
        "window_overlap": overlap, "proxy": sc.proxy, "heldout_scorer": sc.bucket_source(),
    }
    log.info("select: %s", summary)
    return summary
