"""Pretraining batches from the indexed tokens via megatron-core's ``GPTDataset``.

``BlendedMegatronDatasetBuilder`` builds the shuffled sample index (documents concatenated with an end-of-document
token, cut into ``seq_length + 1`` windows) and caches it next to the data; we only take a sample range per step and
per data-parallel rank, so the data cursor is just the step number.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig


def build_gpt_dataset(prefix: str, tokenizer, seq_length: int, num_samples: int, seed: int, cache_dir: str):
    # GPTDataset reads only these tokenizer attributes
    tok = SimpleNamespace(vocab_size=tokenizer.vocab_size, eod=tokenizer.eos_id, pad=tokenizer.pad_id,
                          unique_identifiers={"class": "rpt.Tokenizer", "vocab_size": tokenizer.vocab_size})
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=([prefix], None), split="100,0,0",
        tokenizer=tok, reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False, path_to_cache=cache_dir, mmap_bin_files=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, None, None], lambda: True, config).build()
    return train


def batch_for_step(dataset, step: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> torch.Tensor:
    """Token windows ``[micro_batch, seq_length + 1]`` for ``step`` on this data-parallel rank."""
    start = (step * dp_size + dp_rank) * micro_batch_size
    rows = []
    for i in range(start, start + micro_batch_size):
        sample = dataset[i % len(dataset)]
        rows.append(np.concatenate([sample["tokens"].numpy(), sample["labels"].numpy()[-1:]]))
    return torch.from_numpy(np.stack(rows)).long()
