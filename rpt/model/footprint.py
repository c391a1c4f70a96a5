"""What a model needs before it is built: its vocabulary against the tokenizer's, and its memory against the
device's.

A model that cannot fit is refused at once with the estimate and the settings that would fit, instead of growing
until the OS kills it (``model=qwen2_5_7b run.device=cpu`` reached 12 GB in 88 s, silently, on a 24 GB machine).
The estimate counts what megatron keeps per rank for the chosen parallel layout: the weights in the run's dtype,
and for training the fp32 gradient buffer (``main_grad``) and the optimizer's state (Adam: two fp32 moments, plus
fp32 master weights under bf16; SGD: one momentum), the optimizer's part sharded over data-parallel ranks with
``model.distributed_optimizer``. Activations, logits and the rollout KV cache come on top: the check refuses only
what cannot fit even without them, so it never refuses a run that would have fitted.
"""

from __future__ import annotations

import logging
import math
import os

from rpt.errors import Refusal

log = logging.getLogger(__name__)

OVERSIZED_VOCAB = 500  # a model vocabulary this many times the tokenizer's is worth a word


def model_vocab(model_cfg, tokenizer_vocab: int) -> int:
    """The model's vocabulary: ``model.vocab_size``, or the tokenizer's when unset. A model smaller than its
    tokenizer is refused (token ids would index past the embedding); one 500× larger is said out loud."""
    vocab = model_cfg.vocab_size or tokenizer_vocab
    if vocab < tokenizer_vocab:
        raise Refusal(f"model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer_vocab} ids: the "
                      f"embedding has no row for the rest; set model.vocab_size=null (the tokenizer's size) or >= "
                      f"{tokenizer_vocab}")
    if vocab >= OVERSIZED_VOCAB * tokenizer_vocab:
        log.warning("model.vocab_size=%d is %d× the tokenizer's %d ids: almost every embedding and output row is "
                    "unused (model.vocab_size=null takes the tokenizer's size)", vocab, vocab // tokenizer_vocab,
                    tokenizer_vocab)
    return vocab


def parameter_count(model_cfg, vocab: int) -> int:
    """Parameters of the Qwen2-style GPT ``rpt.model.build`` makes (the whole model, before sharding)."""
    h, f = model_cfg.hidden_size, model_cfg.ffn_hidden_size
    kv = h // model_cfg.num_attention_heads * model_cfg.num_query_groups
    attention = h * (h + 2 * kv) + (h + 2 * kv) * model_cfg.qkv_bias + h * h
    mlp = h * 2 * f + f * h  # gated: fc1 projects to 2f
    layer = attention + mlp + 2 * h  # two RMSNorms
    embeddings = vocab * h * (1 if model_cfg.tie_embeddings else 2)
    return model_cfg.num_layers * layer + embeddings + h


def bytes_per_rank(params: int, dtype_bytes: int, training: bool, optimizer: str, tp: int, dp: int,
                   distributed_optimizer: bool) -> int:
    """Weights (+ gradients and optimizer state when ``training``) one rank holds."""
    shard = params / tp
    total = shard * dtype_bytes
    if training:
        state = (8 if optimizer == "adam" else 4) + (4 if dtype_bytes < 4 else 0)  # moments, master weights
        total += shard * 4 + shard * state / (dp if distributed_optimizer else 1)
    return int(total)


def device_bytes(device) -> int:
    """Memory of the device a rank computes on: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(model_cfg, vocab: int, rt, training: bool, optimizer: str = "adam") -> None:
    """Refuse, before building, a model whose weights (and training state) alone exceed the device's memory,
    naming the estimate and what would bring it within."""
    import torch
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    dtype_bytes = torch.tensor([], dtype=rt.dtype).element_size()
    params = parameter_count(model_cfg, vocab)
    need = bytes_per_rank(params, dtype_bytes, training, optimizer, tp, rt.dp_size, model_cfg.distributed_optimizer)
    have = device_bytes(rt.device)
    if need <= have:
        return
    what = "weights, fp32 gradients and optimizer state" if training else "weights"
    ways = [f"run.tensor_parallel={tp * math.ceil(need / have)} or more (on that many devices)"]
    if training and not model_cfg.distributed_optimizer:
        ways.append("model.distributed_optimizer=true with several data-parallel ranks")
    if dtype_bytes == 4 and rt.device.type == "cuda":
        ways.append("run.dtype=bfloat16")
    if rt.device.type == "cpu":
        ways.append("a GPU (run.device=cuda) or a smaller model (model=tiny, model=smoke)")
    raise Refusal(f"model {model_cfg.name}: {params / 1e9:.2f}B parameters need about {need / 2**30:.1f} GiB per "
                  f"rank for {what} ({str(rt.dtype).removeprefix('torch.')}, tensor parallel {tp}) before "
                  f"any activation, but the {rt.device.type} has {have / 2**30:.1f} GiB; to fit: {'; '.join(ways)}")
