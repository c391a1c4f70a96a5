"""Stored entropies equal a direct computation from the proxy's logits, from windows that overlap so that every
token is scored with enough context; sharded scoring streams the corpus and resumes to byte-identical output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.entropy import score_corpus, score_documents
from rpt.model.forward import full_logits


def _direct(model, tokens: np.ndarray, k: int) -> np.ndarray:
    """Top-k renormalised entropy from the logits, written out longhand."""
    with torch.no_grad():
        logits = full_logits(model, torch.from_numpy(tokens).unsqueeze(0))[0]
    out = np.full(len(tokens), np.nan, dtype=np.float32)
    for t in range(1, len(tokens)):
        top = torch.topk(logits[t - 1], k).values
        p = torch.exp(top - torch.logsumexp(top, 0))
        out[t] = float(-(p * torch.log(p)).sum())
    return out


def _docs(tokenizer):
    texts = ["1 + 2 = 3\n4 + 5 = 9\n", "7 - 3 + 2 = 6\n", "9 + 9 = 18\n2 + 2 = 4\n8 - 1 = 7\n", "5"]
    return [np.array(tokenizer.encode(t), dtype=np.int64) for t in texts]


def test_stored_entropy_equals_direct_computation(tiny_model, tokenizer):
    docs = _docs(tokenizer)
    scored = score_documents(tiny_model, docs, seq_length=64, top_k=16, batch_size=2, device="cpu")
    for tokens, got in zip(docs, scored, strict=True):
        np.testing.assert_allclose(got, _direct(tiny_model, tokens, 16), rtol=1e-4, atol=1e-5)


def test_windows_score_long_documents_from_their_window(tiny_model, tokenizer):
    doc = _docs(tokenizer)[2]
    scored = score_documents(tiny_model, [doc], seq_length=8, top_k=16, batch_size=4, device="cpu")[0]
    np.testing.assert_allclose(scored[9:16], _direct(tiny_model, doc[8:16], 16)[1:], rtol=1e-4, atol=1e-5)
    assert np.isnan(scored[8])  # first token of a window has no context inside it


def _per_doc(shards) -> list[np.ndarray]:
    return [e for shard in shards for e in shard.per_doc()]


def test_sharded_scoring_resumes_byte_identical(tiny_model, tokenizer, tmp_path):
    docs = _docs(tokenizer) * 3
    kw = dict(shard_docs=5, seq_length=64, top_k=16, batch_size=4, device="cpu")
    full = _per_doc(score_corpus(tiny_model, docs, tmp_path / "a", **kw))
    score_corpus(tiny_model, docs, tmp_path / "b", **kw)
    (tmp_path / "b" / "shard_00001.npz").unlink()  # as if killed before the second shard was written
    resumed = _per_doc(score_corpus(tiny_model, docs, tmp_path / "b", **kw))
    for name in ("shard_00000.npz", "shard_00001.npz", "shard_00002.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(full, resumed, strict=True))


def test_shards_equal_scoring_all_documents_at_once(tiny_model, tokenizer, tmp_path):
    """Streaming shard by shard (documents read lazily from an indexed dataset) changes no entropy."""
    from data_prep.indexed import IndexedDocs, write_indexed

    docs = _docs(tokenizer) * 3
    write_indexed(tmp_path / "rpt", [(f"d{i}", d.tolist()) for i, d in enumerate(docs)], tokenizer.vocab_size)
    kw = dict(seq_length=8, top_k=16, batch_size=4, device="cpu", overlap=3)
    shards = score_corpus(tiny_model, IndexedDocs(tmp_path / "rpt"), tmp_path / "s", shard_docs=4, **kw)
    assert len(shards) == 3 and sorted(p.name for p in (tmp_path / "s").glob("shard_*")) == [
        "shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    whole = score_documents(tiny_model, docs, **kw)
    for got, want in zip(_per_doc(shards), whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_shards_scored_another_way_are_not_reused(tiny_model, tokenizer, tmp_path):
    docs = _docs(tokenizer)
    kw = dict(shard_docs=5, seq_length=8, top_k=16, batch_size=4, device="cpu")
    score_corpus(tiny_model, docs, tmp_path, overlap=0, **kw)
    with pytest.raises(ValueError, match="scored with"):
        score_corpus(tiny_model, docs, tmp_path, overlap=4, **kw)


def _owner(t: int, seq_length: int, overlap: int) -> int:
    """The start of the window that scores token t: window k (start k * stride) scores the tokens past its overlap."""
    stride = seq_length - overlap
    return max(0, (t - overlap) // stride) * stride


@pytest.mark.parametrize("overlap", [0, 3, 6])
def test_overlapping_windows_score_every_token_with_enough_context(tiny_model, tokenizer, overlap):
    """Each token's entropy is the proxy's prediction from its own window, which gives it at least
    min(t, overlap) tokens of context (overlap 0: the token at a window start has none and is NaN)."""
    doc = np.concatenate(_docs(tokenizer)[:3])
    seq = 8
    scored = score_documents(tiny_model, [doc], seq_length=seq, top_k=16, batch_size=4, device="cpu",
                             overlap=overlap)[0]
    assert np.isnan(scored[0])
    for t in range(1, len(doc)):
        start = _owner(t, seq, overlap)
        if t == start:  # only with overlap 0
            assert overlap == 0 and np.isnan(scored[t])
            continue
        assert t - start >= min(t, overlap)
        want = _direct(tiny_model, doc[start:start + seq], 16)[t - start]
        np.testing.assert_allclose(scored[t], want, rtol=1e-4, atol=1e-5, err_msg=f"token {t}")
    if overlap:
        assert not np.isnan(scored[1:]).any()


def test_window_overlap_changes_the_scores_near_window_starts(tiny_model, tokenizer):
    doc = np.concatenate(_docs(tokenizer)[:3])
    kw = dict(seq_length=8, top_k=16, batch_size=4, device="cpu")
    plain, overlapped = (score_documents(tiny_model, [doc], overlap=o, **kw)[0] for o in (0, 4))
    assert np.isnan(plain[8]) and not np.isnan(overlapped[8])
    assert not np.allclose(plain[9:12], overlapped[9:12])  # same tokens, longer context
    np.testing.assert_allclose(plain[1:8], overlapped[1:8], rtol=1e-5)  # the first window is the same


def test_window_overlap_must_fit_in_the_window():
    from data_prep.entropy import window_starts
    from rpt.config import SelectConfig

    assert window_starts(20, 8, 3) == [0, 5, 10, 15] and window_starts(20, 8, 0) == [0, 8, 16]
    assert window_starts(8, 8, 3) == [0]
    with pytest.raises(ValueError, match="window overlap"):
        window_starts(20, 8, 8)
    assert SelectConfig().overlap(128) == 64 and SelectConfig(window_overlap=0).overlap(128) == 0
    with pytest.raises(ValueError, match="below data.seq_length"):
        SelectConfig(window_overlap=128).overlap(128)
    with pytest.raises(ValueError, match="window_overlap must be >= 0"):
        SelectConfig(window_overlap=-1)
