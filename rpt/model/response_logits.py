"""Hidden states at the positions that predict response tokens, and any per-token reduction of their logits taken
chunk by chunk (SDPO's top-K distillation, ``rpt.train.self_distill``).

SDPO needs, at every response token, the teacher's top-K next-token log-probs and the student's log-probs at those
K ids. The model runs up to its final norm (``rpt.model.forward.final_hidden_states``), the hidden states of the
response positions are picked out, and ``chunked_reduce`` applies the output layer to ``chunk`` of them at a time:
only ``[chunk, V]`` logits exist at once. With gradient, each chunk goes through ``torch.utils.checkpoint``, so
the backward recomputes its logits instead of keeping them, and only the reduced ``[tokens, K]`` values stay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from rpt.model.forward import final_hidden_states, output_logits, unwrap
from rpt.model.shared_prefix import group_layout, rotary_positions


def response_positions(prompt_lens: torch.Tensor, response_lens: torch.Tensor, width: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every position that predicts a response token, in (row, t) order; column
    ``prompt_len - 1 + t`` indexes the ``[n, T-1]`` per-token layout (aligned with ``tokens[:, 1:]``)."""
    t = torch.arange(width, device=prompt_lens.device)
    valid = t.unsqueeze(0) < response_lens.to(prompt_lens.device).view(-1, 1)
    rows, steps = valid.nonzero(as_tuple=True)
    return rows, prompt_lens[rows] - 1 + steps


def response_hidden(model, tokens: torch.Tensor, prompt_lens: torch.Tensor, response_lens: torch.Tensor,
                    group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final hidden states ``[n_tokens, h]`` at the positions predicting each response token of ``tokens``
    (``[n, T]``, right-padded), with their (row, column) from ``response_positions``. Rows that come in groups of
    ``group_size`` sharing one prompt run over one copy of it (``rpt.model.shared_prefix``), else plain rows."""
    layout = group_layout(tokens, prompt_lens, response_lens, group_size) if group_size > 1 else None
    if layout is not None:
        with rotary_positions(unwrap(model), layout.positions):
            hidden = final_hidden_states(model, layout.tokens, layout.positions, layout.mask)  # [S, rows, h]
        seq, tok = layout.valid.nonzero(as_tuple=True)  # (row, t) order, as response_positions
        return hidden[layout.source_cols[seq, tok], seq // group_size], seq, layout.plain_index[seq, tok]
    prompt_lens = prompt_lens.to(tokens.device)
    used = max(int((prompt_lens + response_lens.to(tokens.device)).max()) - 1, 1) if len(tokens) else 1
    rows, cols = response_positions(prompt_lens, response_lens, used)
    hidden = final_hidden_states(model, tokens[:, :used])  # [s, b, h]
    return hidden[cols, rows], rows, cols


def chunked_reduce(model, hidden: torch.Tensor, chunk: int, reduce: Callable[..., tuple], *extra: torch.Tensor
                   ) -> list[torch.Tensor]:
    """``reduce(logits [c, V], *extra[c])`` over chunks of ``chunk`` tokens of ``hidden`` ``[M, h]``, its outputs
    concatenated. Under autograd each chunk's logits are recomputed in the backward instead of kept."""
    gpt = unwrap(model)

    def one(h, *xs):
        return reduce(output_logits(gpt, h), *xs)

    step = max(chunk, 1)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for start in range(0, max(hidden.shape[0], 1), step):  # an empty batch still runs one (empty) chunk
        args = (hidden[start:start + step], *(x[start:start + step] for x in extra))
        parts.append(checkpoint(one, *args, use_reentrant=False) if recompute else one(*args))
    return [torch.cat(values) for values in zip(*parts, strict=True)]
