"""`rpt bench` part ``scoring``: top-k entropy scoring tokens/s (what `rpt select` runs) against a plain forward over
the same tokens, so the figure shows what scoring adds on top of the model itself."""

from __future__ import annotations

import numpy as np
import torch

from data_prep.entropy import score_documents
from rpt.bench.timing import ratio_spread, timed_alternating
from rpt.model.forward import full_logits


def bench_scoring(model, bc, vocab: int, rt) -> dict:
    """Scoring spreads the documents over data-parallel ranks (and gathers the results); the plain forward peer
    runs over this rank's share, so under several processes both figures are for the whole corpus."""
    device = rt.device
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, vocab, size=bc.train_seq_len).astype(np.int64) for _ in range(bc.batch_size * 2)]
    batch = torch.from_numpy(np.stack(docs[rt.dp_rank::rt.dp_size])).to(device)

    def score():
        score_documents(model, docs, bc.train_seq_len, 16, bc.batch_size, device, rt.dp_rank, rt.dp_size)

    def plain():
        with torch.inference_mode():
            for s in range(0, len(batch), bc.batch_size):
                full_logits(model, batch[s:s + bc.batch_size])

    timings = timed_alternating({"scoring": score, "plain": plain}, bc.repeats)
    score_t, plain_t = timings["scoring"], timings["plain"]
    n_tok = len(docs) * bc.train_seq_len
    return {"scoring_tok_s": n_tok / score_t.median, "plain_forward_tok_s": n_tok / plain_t.median,
            "scoring_vs_plain_forward": plain_t.median / score_t.median,
            "scoring_vs_plain_forward_spread": ratio_spread(plain_t, score_t),
            "spread_s": {"scoring": score_t.spread, "plain_forward": plain_t.spread}}
