"""Forward helpers shared by every stage: position ids, and per-token log-probs, entropies and top-k entropy
computed from the final hidden states without ever holding the logits of every token at once.

With a 150k vocabulary the logits dwarf the model's activations: one GRPO group of 8 × 8,192 tokens is ~40 GB of
float32 logits before ``log_softmax`` copies them. So the model is run up to its final norm only
(``final_hidden_states``: the output layer is handed an empty slice), and the output layer is applied here to
``chunk_tokens`` hidden states at a time (``token_logprobs``, ``token_topk_entropy``). Under autograd the chunks
go through ``_ChunkedLogProbs``, whose backward recomputes one chunk's logits at a time and writes their gradient
in closed form, so the backward never holds the full logits either. ``chunk_tokens=0`` is the one-pass path (all
logits at once, plain autograd): the reference the equivalence tests and the memory benchmark compare against.

Under tensor parallelism each chunk's logits are gathered across the tensor-parallel ranks by megatron's output
layer (``runtime_gather_output=True``; its backward reduces the input gradient), so the statistics are
layout-independent; every rank runs the same chunks in the same order. All reductions run in float32 whatever the
model dtype; the temperature divides the logits before the softmax, as before.
"""

from __future__ import annotations

import contextlib

import torch

LOGITS_CHUNK_TOKENS = 1024  # default tokens per output-layer chunk (~0.6 GB of float32 logits at 150k vocabulary)


def position_ids(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


def unwrap(model):
    """The ``GPTModel`` inside DDP (or any ``.module`` wrapper)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """``[b, s, V]`` float32 logits of a causal forward over ``tokens`` (all of them: for small vocabularies and
    tests; the training and scoring paths use the chunked helpers below)."""
    return model(tokens, position_ids(tokens), None, runtime_gather_output=True).float()


@contextlib.contextmanager
def _capture_output_layer_input(gpt, captured: list):
    """While active, the output layer of ``gpt`` records its input (``[s, b, h]``) in ``captured`` and computes
    logits for none of it."""

    def take(module, args, kwargs):
        captured.append(args[0])
        return (args[0][:0], *args[1:]), kwargs

    handle = gpt.output_layer.register_forward_pre_hook(take, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def final_hidden_states(model, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                        attention_mask=None) -> torch.Tensor:
    """``[s, b, h]`` hidden states that the output layer would turn into logits (after the final norm), from a
    forward of ``model`` (a ``GPTModel`` or its DDP wrapper) over ``tokens`` ``[b, s]``."""
    captured: list[torch.Tensor] = []
    positions = position_ids(tokens) if positions is None else positions
    with _capture_output_layer_input(unwrap(model), captured):
        model(tokens, positions, attention_mask, runtime_gather_output=False)  # [b, 0, V]: nothing to gather
    return captured[0]


def _output_layer(gpt, hidden: torch.Tensor) -> torch.Tensor:
    """``[c, 1, V]`` float32 logits (gathered over tensor-parallel ranks) of hidden states ``[c, h]``. Never a
    view (megatron's gather returns its input as a view at one rank, so it is skipped there), so the backward
    below may reuse the buffer."""
    from megatron.core import parallel_state

    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
    gather = parallel_state.get_tensor_model_parallel_world_size() > 1
    logits, _ = gpt.output_layer(hidden.unsqueeze(1), weight=weight, runtime_gather_output=gather)
    return logits.float()


def output_logits(gpt, hidden: torch.Tensor) -> torch.Tensor:
    """``[c, V]`` float32 logits (gathered over tensor-parallel ranks) of hidden states ``[c, h]``."""
    return _output_layer(gpt, hidden).squeeze(1)


def logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` and the full-distribution entropy at each position (``logits`` ``[..., V]``)."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy (nats) of the top-``k`` next-token distribution, renormalised over those ``k`` tokens."""
    top = torch.topk(logits.float(), k=min(k, logits.shape[-1]), dim=-1).values
    logp = torch.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _chunks(n: int, chunk_tokens: int) -> list[slice]:
    step = chunk_tokens if chunk_tokens > 0 else max(n, 1)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def _logprobs_and_entropy_in_place(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logprobs_and_entropy`` without autograd, overwriting ``logits``: two ``[c, V]`` buffers instead of four."""
    logp_all = logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -logp_all.exp().mul_(logp_all).sum(-1)
    return logp, entropy


def _chunk_stats(gpt, hidden, targets, temperature: float):
    logits = output_logits(gpt, hidden)
    if torch.is_grad_enabled() and logits.requires_grad:  # the one-pass reference under autograd
        return logprobs_and_entropy(logits / temperature, targets)
    return _logprobs_and_entropy_in_place(logits.div_(temperature), targets)


def _chunked_stats(gpt, hidden, targets, temperature: float, chunk_tokens: int):
    parts = [_chunk_stats(gpt, hidden[c], targets[c], temperature) for c in _chunks(len(hidden), chunk_tokens)]
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat([lp for lp, _ in parts]), torch.cat([ent for _, ent in parts])


class _ChunkedLogProbs(torch.autograd.Function):
    """``(logp, entropy)`` of ``targets`` from ``hidden`` ``[M, h]``, one chunk of logits at a time both ways.

    Backward, per chunk, with z = logits / T, p = softmax(z) and H the entropy: d logp_t / dz = onehot(t) − p and
    dH / dz = −p (log p + H); the chunk's logits are recomputed under autograd and this gradient is pushed through
    the output layer (weights accumulate their gradient there, as in reentrant activation checkpointing)."""

    @staticmethod
    def forward(ctx, hidden, targets, gpt, temperature, chunk_tokens):
        logp, entropy = _chunked_stats(gpt, hidden, targets, temperature, chunk_tokens)
        ctx.save_for_backward(hidden, targets, entropy)
        ctx.gpt, ctx.temperature, ctx.chunk_tokens = gpt, temperature, chunk_tokens
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, targets, entropy = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden)
        for c in _chunks(len(hidden), ctx.chunk_tokens):
            h = hidden[c].detach().requires_grad_()
            with torch.enable_grad():
                logits = _output_layer(ctx.gpt, h)  # [c, 1, V]
            with torch.no_grad():
                # the gradient is built in the logits' own buffer (nothing in the graph saves them): two [c, V]
                # buffers at most. log p, then -p * (gl + gH * (log p + H)) + gl at the target, then / T
                grad = logits.detach().squeeze(1).div_(ctx.temperature)
                grad.sub_(torch.logsumexp(grad, dim=-1, keepdim=True))
                p = grad.exp()
                grad.add_(entropy[c].unsqueeze(-1)).mul_(grad_entropy[c].unsqueeze(-1))
                grad.add_(grad_logp[c].unsqueeze(-1)).mul_(p).neg_()
                del p
                grad.scatter_add_(-1, targets[c].unsqueeze(-1), grad_logp[c].unsqueeze(-1))
                grad.div_(ctx.temperature)
            torch.autograd.backward(logits, grad.unsqueeze(1))
            grad_hidden[c] = h.grad
        return grad_hidden, None, None, None, None


def token_logprobs(gpt, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   chunk_tokens: int = LOGITS_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` ``[M]`` and the full-distribution entropy, both at ``temperature``, from hidden
    states ``[M, h]`` of ``gpt`` (``chunk_tokens`` at a time; 0: all at once)."""
    if chunk_tokens > 0 and torch.is_grad_enabled() and hidden.requires_grad:
        return _ChunkedLogProbs.apply(hidden, targets, gpt, temperature, chunk_tokens)
    return _chunked_stats(gpt, hidden, targets, temperature, chunk_tokens)


def token_topk_entropy(gpt, hidden: torch.Tensor, k: int, chunk_tokens: int = LOGITS_CHUNK_TOKENS) -> torch.Tensor:
    """``topk_entropy`` of the logits of hidden states ``[M, h]``, ``chunk_tokens`` at a time (no gradient)."""
    with torch.no_grad():
        parts = [topk_entropy(output_logits(gpt, hidden[c]), k) for c in _chunks(len(hidden), chunk_tokens)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                      where: torch.Tensor | None = None, chunk_tokens: int = LOGITS_CHUNK_TOKENS
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` ``[b, s]`` (the tokens after ``inputs``) and the entropy at each position, from a
    causal forward over ``inputs`` ``[b, s]``; only where ``where`` (``[b, s]`` bool; default: everywhere) is True,
    zero elsewhere."""
    hidden = final_hidden_states(model, inputs).transpose(0, 1)  # [b, s, h]
    where = torch.ones_like(targets, dtype=torch.bool) if where is None else where
    logp, entropy = token_logprobs(unwrap(model), hidden[where], targets[where], temperature, chunk_tokens)

    def spread(values):  # out-of-place index_put keeps the autograd graph
        return torch.zeros(targets.shape, dtype=torch.float32, device=targets.device).index_put((where,), values)

    return spread(logp), spread(entropy)


def sequence_topk_entropy(model, tokens: torch.Tensor, k: int, chunk_tokens: int = LOGITS_CHUNK_TOKENS
                          ) -> torch.Tensor:
    """``[b, s]`` top-``k`` entropy of the next-token distribution after every position of ``tokens`` ``[b, s]``."""
    hidden = final_hidden_states(model, tokens).transpose(0, 1)  # [b, s, h]
    return token_topk_entropy(unwrap(model), hidden.reshape(-1, hidden.shape[-1]), k,
                              chunk_tokens).view(tokens.shape)


def last_token_logits(model, contexts: list[list[int]], device) -> torch.Tensor:
    """``[b, V]`` float32 logits after the last token of each context (right-padded into one batch; causal
    attention means the padding never affects the positions read). Only the ``b`` last positions reach the output
    layer."""
    longest = max(len(c) for c in contexts)
    tokens = torch.zeros(len(contexts), longest, dtype=torch.long)
    for i, context in enumerate(contexts):
        tokens[i, :len(context)] = torch.tensor(context)
    hidden = final_hidden_states(model, tokens.to(device))  # [s, b, h]
    last = torch.tensor([len(c) - 1 for c in contexts], device=device)
    return output_logits(unwrap(model), hidden[last, torch.arange(len(contexts), device=device)])


def lm_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of ``tokens[:, 1:]`` given ``tokens[:, :-1]`` (vocab-parallel)."""
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    per_token = model(inputs, position_ids(inputs), None, labels=labels)
    return per_token.float().mean()
