"""The tokens a corpus continues with: the vocabulary of the direct next-token baseline.

A base's argmax over the whole vocabulary can name a token the corpus never holds at that place: a model pretrained
on worked solutions continues ``= `` with ``<think>`` most of the time, and a format token can never match a corpus
target, so the direct row then measures the format, not next-token prediction (on an under-trained demo base 100%
of first-problem results were ``<think>``). The direct baseline of `eval` therefore takes its argmax over the tokens
that occur in the evaluated corpus (``data/rpt``), with the reasoning format's markers left out whatever the corpus
holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

FORMAT_MARKERS = ("<think>", "</think>")


def token_counts(prefix: Path, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """How often each token id occurs in the indexed dataset at ``prefix`` (read from its ``.bin`` in chunks)."""
    dtype = IndexedDataset(str(prefix)).index.dtype
    tokens = np.memmap(f"{prefix}.bin", dtype=dtype, mode="r")
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[start:start + chunk], dtype=np.int64), minlength=vocab_size)[
            :vocab_size]
    return counts


def marker_ids(tokenizer) -> list[int]:
    """Ids of the format markers that are one token in this tokenizer."""
    ids = [tokenizer.encode(marker) for marker in FORMAT_MARKERS]
    return [pieces[-1] for pieces in ids if pieces and tokenizer.decode(pieces[-1:]).strip() in FORMAT_MARKERS]


def corpus_token_mask(prefix: Path, tokenizer) -> torch.Tensor:
    """``[vocab]`` bool: True for the tokens the corpus at ``prefix`` holds, format markers excluded."""
    mask = torch.from_numpy(token_counts(prefix, tokenizer.vocab_size) > 0)
    mask[marker_ids(tokenizer)] = False
    return mask
