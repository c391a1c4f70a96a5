"""Stored entropies equal a direct computation from the proxy's logits; sharded scoring resumes to
byte-identical output."""

from __future__ import annotations

import numpy as np
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


def test_sharded_scoring_resumes_byte_identical(tiny_model, tokenizer, tmp_path):
    docs = _docs(tokenizer) * 3
    kw = dict(shard_docs=5, seq_length=64, top_k=16, batch_size=4, device="cpu")
    full = score_corpus(tiny_model, docs, tmp_path / "a", **kw)
    score_corpus(tiny_model, docs, tmp_path / "b", **kw)
    (tmp_path / "b" / "shard_00001.npz").unlink()  # as if killed before the second shard was written
    resumed = score_corpus(tiny_model, docs, tmp_path / "b", **kw)
    for name in ("shard_00000.npz", "shard_00001.npz", "shard_00002.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(full, resumed, strict=True))
