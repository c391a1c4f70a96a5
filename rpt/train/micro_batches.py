"""How the trainer cuts a run of rows into forward/backward micro-batches: by row count
(``micro_batch_size``) or by a padded-token budget (``max_tokens_per_micro_batch``, like verl's
``ppo_max_token_len_per_gpu``), always between GRPO groups so every micro-batch can share its prompts.

A micro-batch's cost is the tokens its forward lays out: ``groups × (longest prompt + G × longest response)``
when the groups share their prompt (``rpt.model.shared_prefix``), else ``rows × longest sequence``. The cut only
decides how the rows are grouped: the loss is a weighted sum with weights fixed per mini-batch
(``rpt.train.rl_update.update``), so the numbers do not depend on it.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def micro_batches(rows: range, size: int, group_size: int) -> list[range]:
    """``rows`` cut into chunks of at most ``size`` rows (at least one group), between groups."""
    size = max(group_size, size - size % group_size)
    return [range(s, min(s + size, rows.stop)) for s in range(rows.start, rows.stop, size)]


def padded_tokens(prompt_lens: torch.Tensor, response_lens: torch.Tensor, group_size: int, shared: bool) -> int:
    """Tokens the trainer forward lays out for these rows (whole groups of ``group_size`` consecutive rows)."""
    if not len(prompt_lens):
        return 0
    if shared:
        return len(prompt_lens) // group_size * (int(prompt_lens.max()) + group_size * int(response_lens.max()))
    return len(prompt_lens) * int((prompt_lens + response_lens).max())


def token_budget_micro_batches(prompt_lens: torch.Tensor, response_lens: torch.Tensor, rows: range, budget: int,
                               group_size: int, shared: bool) -> list[range]:
    """``rows`` cut greedily, in order and between groups, into runs whose ``padded_tokens`` stay within
    ``budget``; a group larger than the budget on its own runs alone."""
    cuts, start = [], rows.start
    for first in range(rows.start, rows.stop, group_size):
        end = min(first + group_size, rows.stop)
        if first > start and padded_tokens(prompt_lens[start:end], response_lens[start:end], group_size,
                                           shared) > budget:
            cuts.append(range(start, first))
            start = first
        alone = padded_tokens(prompt_lens[first:end], response_lens[first:end], group_size, shared)
        if alone > budget:
            log.warning("rows %d-%d: one group of %d padded tokens exceeds max_tokens_per_micro_batch=%d; it runs "
                        "as a micro-batch of its own", first, end - 1, alone, budget)
    if start < rows.stop:
        cuts.append(range(start, rows.stop))
    return cuts


def plan_micro_batches(prompt_lens: torch.Tensor, response_lens: torch.Tensor, rows: range, size: int,
                       group_size: int, shared: bool, max_tokens: int | None) -> list[range]:
    """Micro-batches of ``rows``: by ``max_tokens`` padded tokens when it is set, else by ``size`` rows."""
    if max_tokens is None:
        return micro_batches(rows, size, group_size)
    return token_budget_micro_batches(prompt_lens, response_lens, rows, max_tokens, group_size, shared)
