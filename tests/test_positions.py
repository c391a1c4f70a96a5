"""Streaming `select` picks exactly what selecting over the whole corpus in memory picks (every mode), positions
stored by reference give the same items, prompts and rewards as positions written out in full, and the exact
streaming statistics equal numpy's."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from data_prep import order_stats
from data_prep.doc_splits import DROPPED, HELDOUT_SPLITS, TRAIN, split_by_id
from data_prep.entropy import score_corpus
from data_prep.indexed import IndexedDocs, write_indexed
from data_prep.order_stats import ExactQuantile, StreamingHistogram
from data_prep.select_passes import select_positions
from data_prep.selection import random_same_count
from rpt.positions import Positions, write_meta
from rpt.tasks.next_token import NextTokenTask

# ---- the in-memory selection, written out longhand (what `select` did before it streamed) --------------------


def _eligible(e, sc):
    idx = np.arange(len(e))
    ok = (idx >= sc.min_context_tokens) & ~np.isnan(e)
    if sc.max_entropy is not None:
        ok &= np.nan_to_num(e, nan=np.inf) <= sc.max_entropy
    return idx[ok]


def _cap(p, e, cap):
    return p if len(p) <= cap else np.sort(p[np.argsort(-e[p], kind="stable")[:cap]])


def _random_walk(eligible, count, cap, rng):
    flat = [(d, int(t)) for d, p in enumerate(eligible) for t in p]
    per_doc = [[] for _ in eligible]
    taken = 0
    for i in rng.permutation(len(flat)):
        d, t = flat[i]
        if taken >= count:
            break
        if len(per_doc[d]) < cap:
            per_doc[d].append(t)
            taken += 1
    return [np.array(sorted(p), dtype=np.int64) for p in per_doc]


def _in_memory(entropies, sc, rng):
    eligible = [_eligible(e, sc) for e in entropies]
    if sc.mode == "top_fraction":
        cut = np.quantile(np.concatenate([e[p] for p, e in zip(eligible, entropies, strict=True)]),
                          1.0 - sc.top_fraction)
        return [_cap(p[e[p] >= cut], e, sc.max_per_doc) for p, e in zip(eligible, entropies, strict=True)]
    chosen = [_cap(p[e[p] > sc.threshold], e, sc.max_per_doc) for p, e in zip(eligible, entropies, strict=True)]
    if sc.mode == "random":
        chosen = _random_walk(eligible, sum(len(c) for c in chosen), sc.max_per_doc, rng)
    return chosen


def _bucket(entropy, thresholds):
    passed = [name for name, thr in zip(["easy", "medium", "hard"], thresholds, strict=True) if entropy > thr]
    return passed[-1] if passed else None


def _record(doc_id, tokens, t, entropy, sc):
    start = max(0, t - sc.max_context_tokens)
    return {"doc_id": doc_id, "offset": int(t), "context_start": int(start), "context": tokens[start:t].tolist(),
            "target": tokens[t:t + sc.max_target_tokens].tolist(), "entropy": float(entropy),
            "bucket": _bucket(entropy, sc.difficulty_thresholds)}


def old_select(docs, doc_ids, entropies, sc, seed, splits):
    """train records and held-out records per split ({validation, test}) as the in-memory `select` wrote them to
    train.jsonl / heldout.jsonl (``splits``: each document's split; DROPPED documents in none)."""
    train_idx = [i for i, s in enumerate(splits) if s == TRAIN]
    chosen = _in_memory([entropies[i] for i in train_idx], sc, np.random.default_rng(seed))
    train = [_record(doc_ids[i], docs[i], int(t), entropies[i][t], sc) for i, ts in zip(train_idx, chosen,
                                                                                         strict=True) for t in ts]
    held = {"validation": [], "test": []}
    for name, code in HELDOUT_SPLITS.items():
        for i in (i for i, s in enumerate(splits) if s == code):
            p = _eligible(entropies[i], sc)
            held[name] += [_record(doc_ids[i], docs[i], int(t), entropies[i][t], sc)
                           for t in p[entropies[i][p] > sc.difficulty_thresholds[0]]]
    return train, held


# ---- fixtures: a real indexed corpus scored by a real (tiny) model -------------------------------------------


@pytest.fixture()
def scored_run(tiny_model, tokenizer, tmp_path):
    """A run directory with data/rpt (long and short documents) and its entropy shards (windows of 16 tokens
    overlapping by 6, shards of 7 documents), plus selection settings that exercise every rule."""
    from data_prep.demo_corpus import generate_documents
    from tests.conftest import demo_data_cfg

    texts = generate_documents(demo_data_cfg(), 30, 0.0, seed=3)
    texts += ["\n".join(texts[i:i + 4]) for i in range(0, 12, 4)]  # longer than a window
    docs = [np.array(tokenizer.encode(t), dtype=np.int64) for t in texts]
    ids = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
    write_indexed(tmp_path / "data" / "rpt", zip(ids, (d.tolist() for d in docs), strict=True),
                  tokenizer.vocab_size)
    corpus = IndexedDocs(tmp_path / "data" / "rpt")
    shards = score_corpus(tiny_model, corpus, tmp_path / "positions" / "entropy_shards", shard_docs=7,
                          seq_length=16, top_k=16, batch_size=8, device="cpu", overlap=6)
    entropies = [e for shard in shards for e in shard.per_doc()]
    q = np.nanquantile(np.concatenate(entropies), [0.3, 0.5, 0.6, 0.85, 0.95])
    sc = SimpleNamespace(mode="threshold", threshold=float(q[1]), top_fraction=0.25, max_entropy=float(q[4]),
                         min_context_tokens=3, max_context_tokens=10, max_target_tokens=5, max_per_doc=4,
                         heldout_fraction=0.3, difficulty_thresholds=[float(q[0]), float(q[2]), float(q[3])])
    return SimpleNamespace(path=tmp_path, corpus=corpus, docs=docs, ids=ids, shards=shards, entropies=entropies,
                           sc=sc)


def _splits(run, sc):
    """Each document's split by id; the first held-out document dropped (as `data.decontaminate` would)."""
    splits = np.array([split_by_id(d, sc.heldout_fraction, 0.5) for d in run.ids], dtype=np.int8)
    splits[np.flatnonzero(splits != TRAIN)[0]] = DROPPED
    return splits


def _select(run, **changes):
    sc = SimpleNamespace(**{**vars(run.sc), **changes})
    got = select_positions(run.shards, _splits(run, sc), sc, 7, run.path / "positions")
    write_meta(run.path / "positions", run.corpus.manifest, sc.max_context_tokens, sc.max_target_tokens,
               {"train": got.train, **got.heldout})
    return sc, got


def _as_dicts(positions):
    keys = ("doc_id", "offset", "context_start", "context", "target", "entropy", "bucket")
    return [{k: item[k] for k in keys} for item in positions]


@pytest.mark.parametrize("mode", ["threshold", "top_fraction", "random"])
def test_streaming_selection_equals_selection_in_memory(scored_run, mode):
    sc, got = _select(scored_run, mode=mode)
    splits = _splits(scored_run, sc)
    train, held = old_select(scored_run.docs, scored_run.ids, scored_run.entropies, sc, 7, splits)
    assert train and all(held.values()) and any(r["bucket"] == "hard" for r in held["test"])
    assert len({r["doc_id"] for r in train}) < len(train)  # several positions per document: the cap matters
    assert _as_dicts(Positions(scored_run.path / "positions", "train")) == train
    for name in HELDOUT_SPLITS:
        assert _as_dicts(Positions(scored_run.path / "positions", name)) == held[name]
    assert (got.train, got.heldout) == (len(train), {name: len(r) for name, r in held.items()})
    dropped = scored_run.ids[int(np.flatnonzero(splits == DROPPED)[0])]
    written = [item["doc_id"] for name in ("train", *HELDOUT_SPLITS)
               for item in Positions(scored_run.path / "positions", name)]
    assert dropped not in written  # a dropped document gives no position to any split
    values = np.concatenate([e[~np.isnan(e)] for e in scored_run.entropies])
    assert got.scored == len(values) and got.entropy_p80 == float(np.quantile(values, 0.8))
    assert got.entropy_sum / got.scored == pytest.approx(float(values.mean()), rel=1e-6)
    counts, edges = np.histogram(values, bins=60)
    np.testing.assert_array_equal(got.histogram[0], counts)
    for name, records in held.items():
        assert dict(got.heldout_buckets[name]) == {b: sum(r["bucket"] == b for r in records)
                                                   for b in ("easy", "medium", "hard")
                                                   if any(r["bucket"] == b for r in records)}


def test_modes_select_differently(scored_run):
    picked = {}
    for mode in ("threshold", "top_fraction", "random"):
        _select(scored_run, mode=mode, max_per_doc=64)
        picked[mode] = [(r["doc_id"], r["offset"]) for r in _as_dicts(Positions(scored_run.path / "positions",
                                                                                "train"))]
    assert len(set(map(tuple, picked.values()))) == 3
    assert len(picked["random"]) == len(picked["threshold"])  # the baseline matches the threshold rule's count


def test_tasks_by_reference_equal_tasks_by_value(scored_run, tokenizer, tmp_path):
    """The same items, prompts, targets and rewards for every step's draw as the task built from records that
    carry their context and target."""
    sc, _ = _select(scored_run)
    train, _ = old_select(scored_run.docs, scored_run.ids, scored_run.entropies, sc, 7, _splits(scored_run, sc))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    template = "{context}<think>"
    by_value = NextTokenTask(tmp_path / "train.jsonl", tokenizer, template, format_reward=0.1)
    by_ref = NextTokenTask(Positions(scored_run.path / "positions", "train"), tokenizer, template,
                           format_reward=0.1)
    assert len(by_ref) == len(by_value)
    for step in range(3):
        for a, b in zip(by_value.items_for_step(step, 5, seed=11), by_ref.items_for_step(step, 5, seed=11),
                        strict=True):
            assert by_ref.prompt_ids(b) == by_value.prompt_ids(a)
            assert by_ref.target_bytes(b) == by_value.target_bytes(a) and b["entropy"] == a["entropy"]
            right = f"</think> \\boxed{{{by_value.reference(a)[:3]}}}"
            for response in (right, "</think> \\boxed{zz}", "no answer"):
                assert by_ref.reward(b, response) == by_value.reward(a, response)


def test_items_are_read_only_when_used(scored_run):
    _select(scored_run)
    positions = Positions(scored_run.path / "positions", "train")
    item = positions[len(positions) - 1]
    assert item._cache == {}  # drawing an item reads nothing from the corpus
    assert item["offset"] - item["context_start"] == len(item["context"]) <= 10 and set(item._cache) == {
        "offset", "context_start", "context"}
    assert positions[-1]["offset"] == item["offset"]
    with pytest.raises(IndexError):
        positions[len(positions)]


def test_positions_refuse_a_changed_corpus(scored_run, tokenizer):
    _select(scored_run)
    write_indexed(scored_run.path / "data" / "rpt", [("x", tokenizer.encode("1 + 1 = 2"))], tokenizer.vocab_size)
    with pytest.raises(ValueError, match="rerun `rpt select`"):
        Positions(scored_run.path / "positions", "train")


def test_random_walk_in_chunks_equals_one_walk():
    rng = np.random.default_rng(0)
    eligible = [np.sort(rng.choice(50, size=rng.integers(0, 12), replace=False)) for _ in range(40)]
    offsets, per_doc = np.concatenate(eligible), np.array([len(p) for p in eligible])
    want = _random_walk(eligible, 60, 3, np.random.default_rng(5))
    for chunk in (1, 7, 1 << 20):
        docs, chosen = random_same_count(offsets, per_doc, 60, 3, np.random.default_rng(5), chunk=chunk)
        got = [chosen[docs == d] for d in range(len(eligible))]
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), chunk


@pytest.mark.parametrize("q", [0.0, 0.2, 0.8, 0.75, 1.0])
def test_exact_quantile_and_histogram_equal_numpy(q, monkeypatch):
    rng = np.random.default_rng(1)
    for values in (rng.random(1001).astype(np.float32) * 3, rng.integers(0, 6, 333).astype(np.float32) / 4,
                   np.float32(1.5) + rng.integers(0, 3, 50).astype(np.float32) * np.float32(1e-7),
                   (rng.standard_normal(200) * 1e-3).astype(np.float32), np.float32([2.5])):
        chunks = np.array_split(values, 4)
        quantile = ExactQuantile(q)
        for c in chunks:
            quantile.count(c)
        for c in chunks:
            quantile.refine(c)
        assert quantile.value() == np.quantile(values, q)
        with monkeypatch.context() as patched:  # a numpy without the private helpers: the float64 formula
            patched.setattr(order_stats, "_LINEAR", None)
            fallback = ExactQuantile(q)
            for c in chunks:
                fallback.count(c)
            for c in chunks:
                fallback.refine(c)
            assert abs(fallback.value() - np.quantile(values, q)) <= np.spacing(abs(np.quantile(values, q)))
    values = rng.random(500).astype(np.float32)
    hist = StreamingHistogram(60, values.min(), values.max())
    for c in np.array_split(values, 3):
        hist.add(c)
    np.testing.assert_array_equal(hist.counts, np.histogram(values, bins=60)[0])
    with pytest.raises(ValueError, match="no values"):
        ExactQuantile(q).value()
