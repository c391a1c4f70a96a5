"""Proxy-model entropy scoring: for every token t of every document, the entropy of the proxy's top-k
distribution for x_t given x_<t (renormalised over the k most likely tokens, as in the RPT paper).

Documents are cut into windows of ``seq_length`` tokens, sorted by length and batched so that padding is at most
the length spread inside a batch; the forward runs under ``torch.inference_mode``. Data-parallel ranks score
disjoint windows and the results are gathered. Output: one float32 array per document (entry 0 is NaN: the first
token has no context).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from rpt.model.forward import full_logits, topk_entropy


def _windows(docs: list[np.ndarray], seq_length: int) -> list[tuple[int, int, np.ndarray]]:
    out = []
    for d, tokens in enumerate(docs):
        for start in range(0, len(tokens), seq_length):
            out.append((d, start, tokens[start:start + seq_length]))
    return out


@torch.inference_mode()
def score_documents(model, docs: list[np.ndarray], seq_length: int, top_k: int, batch_size: int, device,
                    dp_rank: int = 0, dp_size: int = 1, progress=lambda x, **k: x) -> list[np.ndarray]:
    windows = sorted(_windows(docs, seq_length), key=lambda w: len(w[2]))
    mine = list(range(dp_rank, len(windows), dp_size))
    results: dict[int, np.ndarray] = {}
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    for batch in progress(batches, desc="score entropy"):
        longest = max(len(windows[i][2]) for i in batch)
        tokens = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, i in enumerate(batch):
            w = windows[i][2]
            tokens[row, :len(w)] = torch.from_numpy(w)
        ent = topk_entropy(full_logits(model, tokens.to(device)), top_k).float().cpu().numpy()
        for row, i in enumerate(batch):
            results[i] = ent[row, :len(windows[i][2]) - 1]
    if dp_size > 1:
        gathered = [None] * dp_size
        dist.all_gather_object(gathered, results)
        results = {k: v for part in gathered for k, v in part.items()}
    per_doc = [np.full(len(t), np.nan, dtype=np.float32) for t in docs]
    for i, (d, start, w) in enumerate(windows):
        # logits at window position j predict token start + j + 1
        per_doc[d][start + 1:start + len(w)] = results[i]
    return per_doc
