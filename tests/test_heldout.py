"""Held out by content: the overlap measure against hand values, the demo's held-out problems disjoint from every
training split (through `rpt prep`), a corpus with planted near duplicates measured and decontaminated, and the
direct baseline's corpus-token vocabulary (format tokens excluded)."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch

from data_prep.contamination import TrainingIndex, measure_overlap, ngram_hashes
from data_prep.doc_splits import DROPPED, HELDOUT_SPLITS, TRAIN
from tests.helpers import rpt_command, run_command

README_LINES = ("rpt prep data=jsonl data.source='/data/corpus/*.jsonl' run.name=clean data.decontaminate=true "
                "data.contamination_ngram=8",
                "rpt pipeline run.name=exp1 stages=[proxy,select] select.proxy=proxy proxy.num_layers=2 "
                "proxy.hidden_size=64 proxy.ffn_hidden_size=192 proxy.num_attention_heads=2 force=true")
README_DECONTAMINATE, README_PROXY = README_LINES

WORDS = [f"w{i}" for i in range(300)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def test_ngram_hashes_follow_the_words_not_their_position():
    a, b = ngram_hashes("x y z x y z".split(), 3), ngram_hashes("q x y z".split(), 3)
    assert len(a) == 4 and a[0] == a[3] == b[1] and len(set(a.tolist())) == 3
    assert len(ngram_hashes(["x", "y"], 3)) == 0


def test_overlap_measure_against_hand_values():
    rng = random.Random(0)
    train = [_text(rng, 40) for _ in range(5)] + ["a + b = c\nshared line here\n"]
    clean = _text(random.Random(1), 30)
    one_gram = _text(random.Random(2), 20) + " " + " ".join(train[0].split()[5:18])  # one 13-gram of train[0]
    near = " ".join(train[1].split()[:38]) + " zz1 zz2"  # 40 words, the first 38 from train[1]
    index = TrainingIndex(train, 13)
    got = measure_overlap([train[2].upper(), clean, one_gram, near, "too short", "A + B = C\nnew line\n"], index)
    assert got.exact_duplicate == [True, False, False, False, False, False]  # normalised: lower case
    assert got.contaminated == [True, False, True, True, False, False]
    assert got.ngram_overlap[0] == 1.0 and got.ngram_overlap[1] == 0.0
    assert got.ngram_overlap[2] == pytest.approx(1 / 21)  # 33 words: 21 13-grams, one of them from training
    assert got.ngram_overlap[3] == pytest.approx(26 / 28)  # 40 words: 28 13-grams, the first 26 from train[1]
    assert got.near_duplicate == [True, False, False, True, False, False]
    assert got.too_short == 2
    summary = got.summary(13, 0.8)
    assert summary["contaminated"] == 3 and summary["exact_duplicates"] == 1 and summary["near_duplicates"] == 2
    assert summary["lines_by_words"]["5"] == {"lines": 1, "in_training": 1}  # "a + b = c", case folded
    assert summary["lines_by_words"]["2"] == {"lines": 2, "in_training": 0}  # "too short", "new line"


def _expressions(text: str) -> list[str]:
    return [line.split(" = ")[0].strip() for line in text.splitlines() if " = " in line]


@pytest.mark.e2e
def test_demo_heldout_problems_are_not_training_problems(tmp_path):
    """Every validation and test problem of 3+ terms is absent from the pretraining and RPT-train documents (by
    expression, on the documents `prep` wrote); the two-term sums, which cannot be split, are shared and the
    contamination table says so."""
    from data_prep.indexed import IndexedDocs
    from rpt.tokenizer import load_tokenizer

    run_command(rpt_command("prep", "experiment=smoke", f"run.root={tmp_path}", "run.name=d",
                            "data.num_pretrain_docs=1500", "data.num_rpt_docs=400"), cwd=tmp_path)
    rd = tmp_path / "d"
    tok = load_tokenizer(rd / "tokenizer")
    texts = lambda docs, idx: [tok.decode(docs.tokens(int(i)).tolist()) for i in idx]  # noqa: E731
    pretrain, rpt = IndexedDocs(rd / "data" / "pretrain"), IndexedDocs(rd / "data" / "rpt")
    splits = np.load(rd / "data" / "rpt_doc_splits.npy")
    assert len(splits) == len(rpt) and set(np.unique(splits)) == {TRAIN, *HELDOUT_SPLITS.values()}
    training = {e for t in texts(pretrain, range(len(pretrain))) + texts(rpt, np.flatnonzero(splits == TRAIN))
                for e in _expressions(t)}
    heldout = [e for t in texts(rpt, np.flatnonzero(splits != TRAIN)) for e in _expressions(t)]
    long_ones = [e for e in heldout if len(e.split()) >= 5]
    assert len(long_ones) > 200 and not set(long_ones) & training
    assert {e for e in heldout if len(e.split()) == 3} & training  # the 100 two-term sums stay shared
    from rpt.config import RLTaskConfig
    from rpt.tasks.downstream import build_downstream_task

    questions = build_downstream_task(RLTaskConfig(test_size=200, heldout_share=0.25), tok, "test", 0).items
    assert not {q["metadata"]["expression"] for q in questions} & training  # the demo's downstream test, too
    report = json.loads((rd / "data" / "contamination.json").read_text())
    for split in HELDOUT_SPLITS:
        lines = report["splits"][split]["lines_by_words"]
        assert lines["7"]["in_training"] == lines["9"]["in_training"] == 0 and lines["9"]["lines"] > 0
        assert report["splits"][split]["contaminated"] == 0
    assert report["splits"]["test"]["lines_by_words"]["5"]["in_training"] > 0


@pytest.mark.e2e
def test_planted_near_duplicates_are_found_and_dropped(tmp_path):
    """A corpus where 40 documents have a near copy (the last word changed): every held-out document whose copy
    went to a training split is contaminated, none other is, and `data.decontaminate=true` drops exactly those."""
    from data_prep.corpus import doc_id

    rng = random.Random(3)
    originals = [_text(rng, 30) for _ in range(120)]
    copies = {i: " ".join(originals[i].split()[:-1] + ["changed"]) for i in range(40)}
    partner = {doc_id(t): doc_id(copies[i]) for i, t in enumerate(originals) if i in copies}
    partner.update({b: a for a, b in partner.items()})
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in originals + list(copies.values())))
    from tests.test_readme import run_line

    run_line(README_DECONTAMINATE, tmp_path, replace={"data.source": corpus, "run.name": "c"},
             append=[f"run.root={tmp_path}", "data.rpt_fraction=0.6", "data.heldout_fraction=0.4"])
    data = tmp_path / "c" / "data"
    pretrain_ids = set(json.loads((data / "pretrain.docs.json").read_text()))
    rpt_ids = json.loads((data / "rpt.docs.json").read_text())
    splits = np.load(data / "rpt_doc_splits.npy")
    training = pretrain_ids | {d for d, s in zip(rpt_ids, splits, strict=True) if s == TRAIN}
    heldout = [d for d, s in zip(rpt_ids, splits, strict=True) if s != TRAIN]
    expected = {d for d in heldout if partner.get(d) in training}
    assert expected and len(expected) < len(heldout)  # the corpus plants both kinds
    assert {d for d, s in zip(rpt_ids, splits, strict=True) if s == DROPPED} == expected
    report = json.loads((data / "contamination.json").read_text())
    assert sum(s["contaminated"] for s in report["splits"].values()) == len(expected)
    assert sum(s["dropped"] for s in report["splits"].values()) == len(expected)
    assert report["ngram"] == 8  # 22 of a copy's 23 8-grams are its original's: a near duplicate
    assert sum(s["near_duplicates"] for s in report["splits"].values()) == len(expected)


def test_direct_baseline_argmax_skips_tokens_the_corpus_never_holds():
    from rpt.eval.accuracy import argmax_over

    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0, 9.0], [3.0, 0.0, 1.0, 0.0, 9.0]])  # column 4: a padded vocab row
    allowed = torch.tensor([True, False, True, True])
    assert argmax_over(logits, allowed).tolist() == [3, 0]
    assert logits.argmax(-1).tolist() == [4, 4]


def test_corpus_tokens_are_the_corpus_vocabulary_without_the_think_markers(tokenizer, tmp_path):
    from data_prep.indexed import write_indexed
    from rpt.eval.corpus_tokens import corpus_token_mask, marker_ids

    think = marker_ids(tokenizer)
    assert len(think) == 2 and all(tokenizer.decode([t]).strip() in ("<think>", "</think>") for t in think)
    docs = ["1 + 2 = 3\n", "4 + 5 = <think> 4 + 5 = 9 </think> \\boxed{9} 9\n"]
    ids = [tokenizer.encode(d) for d in docs]
    write_indexed(tmp_path / "rpt", ((str(i), x) for i, x in enumerate(ids)), tokenizer.vocab_size)
    mask = corpus_token_mask(tmp_path / "rpt", tokenizer)
    present = {t for x in ids for t in x}
    assert len(mask) == tokenizer.vocab_size
    assert set(torch.nonzero(mask).flatten().tolist()) == present - set(think)
    assert re.search("<think>", docs[1]) and all(t in present for t in think)  # present, and still excluded


@pytest.mark.e2e
def test_a_separate_proxy_chooses_training_positions_and_the_base_buckets_the_heldout_ones(tmp_path):
    """select.proxy=proxy on a run that selected with its base (redone with force=true): stage `proxy` pretrains a
    smaller model; the training positions carry its entropies, the validation and test positions the base's (each
    record's entropy is the scoring shard's value there)."""
    from rpt.positions import Positions
    from tests.test_readme import run_line

    run_command(rpt_command("pipeline", "experiment=smoke", f"run.root={tmp_path}", "run.name=p",
                            "stages=[prep,pretrain,select]", "select.threshold=0.0"), cwd=tmp_path)
    run_line(README_PROXY, tmp_path, replace={"run.name": "p", "proxy.num_layers": 1, "proxy.hidden_size": 16,
                                              "proxy.ffn_hidden_size": 32},
             append=[f"run.root={tmp_path}", "proxy.steps=4"])
    rd = tmp_path / "p"
    parameters = {s: json.loads((rd / "done" / f"{s}.json").read_text())["parameters"] for s in ("pretrain", "proxy")}
    assert parameters["proxy"] < parameters["pretrain"] / 2

    summary = json.loads((rd / "done" / "select.json").read_text())
    assert summary["proxy"] == "proxy" and summary["heldout_scorer"] == "pretrain"
    per_doc = {}
    for name in ("entropy_shards", "entropy_shards_heldout"):
        arrays = sorted((rd / "positions" / name).glob("shard_*.npz"))
        docs = []
        for path in arrays:
            data = np.load(path)
            bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
            docs += [data["entropy"][a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        per_doc[name] = docs
    for split, source in (("train", "entropy_shards"), ("validation", "entropy_shards_heldout"),
                          ("test", "entropy_shards_heldout")):
        records = Positions(rd / "positions", split).records
        assert len(records)
        got = records["entropy"]
        want = np.array([per_doc[source][int(r["doc"])][int(r["offset"])] for r in records], dtype=np.float32)
        other = "entropy_shards_heldout" if source == "entropy_shards" else "entropy_shards"
        wrong = np.array([per_doc[other][int(r["doc"])][int(r["offset"])] for r in records], dtype=np.float32)
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, wrong)  # the two models disagree: the test can tell them apart
