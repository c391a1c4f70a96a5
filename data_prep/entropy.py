"""Proxy-model entropy scoring: for every token t of every document, the entropy of the proxy's top-k
distribution for x_t given x_<t (renormalised over the k most likely tokens, as in the RPT paper).

Documents longer than ``seq_length`` are cut into windows of ``seq_length`` tokens that overlap by ``overlap``
tokens (stride ``seq_length - overlap``); a token is taken from the window where it has the most context, so every
token t is scored with at least min(t, overlap) tokens of context (``overlap=0``: plain cuts, where the first
token of every window has none and is NaN). Windows are sorted by length and batched so that padding is at most
the length spread inside a batch (the padding share is logged: about 4% on the demo corpus of 20-70-token
documents); the forward runs under ``torch.inference_mode``. Data-parallel ranks score disjoint windows and the
results are gathered. Output: one float32 array per document (entry 0 is NaN: the first token has no context).

``score_corpus`` streams the corpus shard by shard (``shard_docs`` documents each: only one shard's tokens and
entropies are in memory at a time) and writes every finished shard atomically, so a killed scoring run resumes at
the first missing shard and produces byte-identical output; ``EntropyShards`` reads the shards back one at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rpt.distributed import barrier, gather_objects
from rpt.model.forward import sequence_topk_entropy
from rpt.rundir import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


def window_starts(length: int, seq_length: int, overlap: int) -> list[int]:
    """Where the scoring windows of a ``length``-token document start: every ``seq_length - overlap`` tokens until
    one reaches the end."""
    if not 0 <= overlap < seq_length:
        raise ValueError(f"window overlap must be in [0, seq_length={seq_length}), got {overlap}")
    starts = [0]
    while starts[-1] + seq_length < length:
        starts.append(starts[-1] + seq_length - overlap)
    return starts


def _windows(docs: list[np.ndarray], seq_length: int, overlap: int) -> list[tuple[int, int, np.ndarray]]:
    return [(d, start, tokens[start:start + seq_length]) for d, tokens in enumerate(docs)
            for start in window_starts(len(tokens), seq_length, overlap)]


@torch.inference_mode()
def score_documents(model, docs: list[np.ndarray], seq_length: int, top_k: int, batch_size: int, device,
                    dp_rank: int = 0, dp_size: int = 1, progress=lambda x, **k: x, overlap: int = 0
                    ) -> list[np.ndarray]:
    windows = sorted(_windows(docs, seq_length, overlap), key=lambda w: len(w[2]))
    mine = list(range(dp_rank, len(windows), dp_size))
    results: dict[int, np.ndarray] = {}
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    slots = real = 0
    for batch in progress(batches, desc="score entropy"):
        longest = max(len(windows[i][2]) for i in batch)
        slots, real = slots + longest * len(batch), real + sum(len(windows[i][2]) for i in batch)
        tokens = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, i in enumerate(batch):
            w = windows[i][2]
            tokens[row, :len(w)] = torch.from_numpy(w)
        ent = sequence_topk_entropy(model, tokens.to(device), top_k).cpu().numpy()  # output layer in chunks
        for row, i in enumerate(batch):
            results[i] = ent[row, :len(windows[i][2]) - 1]
    log.info("scored %d tokens in %d batch slots (padding %.2f%%)", real, slots, 100 * (1 - real / max(slots, 1)))
    if dp_size > 1:
        results = {k: v for part in gather_objects(results) for k, v in part.items()}
    per_doc = [np.full(len(t), np.nan, dtype=np.float32) for t in docs]
    for i, (d, start, w) in enumerate(windows):
        # logits at window position j predict token start + j + 1; a later window owns the tokens past its overlap
        first = start + max(1, overlap if start else 0)
        per_doc[d][first:start + len(w)] = results[i][first - start - 1:]
    return per_doc


@dataclass
class EntropyShard:
    """One stored shard: documents ``first_doc ..`` with their lengths and their entropies end to end."""
    first_doc: int
    lengths: np.ndarray
    entropy: np.ndarray

    def per_doc(self) -> list[np.ndarray]:
        return np.split(self.entropy, np.cumsum(self.lengths)[:-1])


@dataclass
class EntropyShards:
    """The shards of a scored corpus, read back one at a time (each iteration re-reads them from disk)."""
    out_dir: Path
    documents: int
    shard_docs: int

    def __len__(self) -> int:
        return -(-self.documents // self.shard_docs)

    def path(self, shard: int) -> Path:
        return self.out_dir / f"shard_{shard:05d}.npz"

    def __iter__(self) -> Iterator[EntropyShard]:
        for shard in range(len(self)):
            with np.load(self.path(shard)) as z:
                yield EntropyShard(shard * self.shard_docs, z["lengths"], z["entropy"])


def _check_settings(out_dir: Path, settings: dict, is_main: bool) -> None:
    """Shards are reused only if they were scored the same way; the settings are recorded next to them."""
    path = out_dir / "scoring.json"
    if path.exists():
        if (stored := read_json(path)) != settings:
            raise ValueError(f"{out_dir} holds entropies scored with {stored}, not {settings}; delete it to rescore")
    elif any(out_dir.glob("shard_*.npz")):
        raise ValueError(f"{out_dir} holds entropy shards without {path.name} (scored by an older version); "
                         "delete it to rescore")
    elif is_main:
        write_json(path, settings)


def score_corpus(model, docs: Sequence[np.ndarray], out_dir: Path, shard_docs: int, seq_length: int, top_k: int,
                 batch_size: int, device, dp_rank: int = 0, dp_size: int = 1, is_main: bool = True,
                 progress=lambda x, **k: x, overlap: int = 0) -> EntropyShards:
    """Score ``docs`` (any sequence of token arrays, read lazily: e.g. ``IndexedDocs``) shard by shard under
    ``out_dir``, reusing shards a previous (killed) run finished; only one shard is held at a time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = EntropyShards(out_dir, len(docs), shard_docs)
    _check_settings(out_dir, {"documents": len(docs), "shard_docs": shard_docs, "seq_length": seq_length,
                              "overlap": overlap, "top_k": top_k}, is_main)
    barrier()
    bar = progress(range(len(shards)), desc="score shards")
    for shard in bar:
        path = shards.path(shard)
        if path.exists():
            continue
        chunk = [docs[i] for i in range(shard * shard_docs, min((shard + 1) * shard_docs, len(docs)))]
        t0 = time.perf_counter()
        scored = score_documents(model, chunk, seq_length, top_k, batch_size, device, dp_rank, dp_size,
                                 overlap=overlap)
        tokens_per_s = sum(len(d) for d in chunk) / (time.perf_counter() - t0)
        log.info("scored shard %d (%d documents) at %.0f tokens/s", shard, len(chunk), tokens_per_s)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(tok_s=f"{tokens_per_s:.0f}")
        if is_main:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, entropy=np.concatenate(scored), lengths=np.array([len(d) for d in chunk]))
        del chunk, scored
        barrier()
    return shards
