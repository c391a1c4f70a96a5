"""Decode attention over a prompt whose keys and values are stored once for all the rows that share it.

A GRPO group's G rows continue one prompt. Kept as G copies in a per-row KV cache, every decode step reads the
prompt's keys and values G times: for RPT, whose prompts are long document prefixes and whose answers are short,
that is almost all of a decode step's attention traffic and of the cache's memory. Here the prompt's keys and
values are kept once per group (``prefix_k``/``prefix_v`` ``[groups, kv_heads, P, d]``) and each row's cache holds
only its generated tokens. A decode step scores each row's query against its group's prompt (one batched matmul
per group: the G rows' queries together) and against its own tokens, takes one softmax over both (in float32),
and sums the two weighted values: the same attention as over the concatenated keys, up to float rounding. This
is the split that cascade attention kernels (FlashInfer's) make on GPU; written here with torch matmuls because
the CPU SDPA kernels have no such entry point and this code must run on both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowGroups:
    """Which prompt group each decoding row continues (rows are group-major: a group's rows are contiguous and
    groups ascend), and its slot within the group, so the rows of a group can be batched together."""

    group: torch.Tensor  # [rows] index of the row's prompt group
    slot: torch.Tensor  # [rows] position of the row among its group's remaining rows
    groups: int  # prompt groups (a group whose rows all finished stays, with no rows)
    width: int  # most rows any group still has
    full: bool = False  # every group has ``width`` rows: row r is slot r % width of group r // width

    @classmethod
    def of(cls, group: torch.Tensor, groups: int) -> RowGroups:
        counts = torch.bincount(group, minlength=groups)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(group), device=group.device) - first[group]
        width = int(counts.max()) if len(group) else 0
        return cls(group, slot, groups, width, bool(len(group)) and bool((counts == width).all()))

    def keep(self, rows: torch.Tensor) -> RowGroups:
        """The groups of the rows ``rows`` (ascending indices into the current rows), renumbered from 0."""
        return RowGroups.of(self.group[rows], self.groups)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[rows, kv_heads, n, k]`` -> ``[groups, kv_heads, width * n, k]`` (a group's rows side by side, zeros
        in the slots of rows it no longer has)."""
        rows, heads, n, k = x.shape
        if self.full:  # no empty slot: a reshape (no scatter into zeros)
            out = x.view(self.groups, self.width, heads, n, k)
        else:
            out = x.new_zeros(self.groups, self.width, heads, n, k)
            out[self.group, self.slot] = x
        return out.transpose(1, 2).reshape(self.groups, heads, self.width * n, k)

    def scatter(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The inverse of ``gather``: ``[groups, kv_heads, width * n, k]`` -> ``[rows, kv_heads, n, k]``."""
        heads, k = x.shape[1], x.shape[-1]
        per_slot = x.view(self.groups, heads, self.width, n, k)
        if self.full:
            return per_slot.transpose(1, 2).reshape(self.groups * self.width, heads, n, k)
        return per_slot[self.group, :, self.slot]


def shared_prompt_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, k: torch.Tensor,
                            v: torch.Tensor, rows: RowGroups, scale: float, mask: torch.Tensor | None
                            ) -> torch.Tensor:
    """One decode step's attention: ``q`` ``[rows, heads, 1, d]`` over its group's prompt ``prefix_k``/``prefix_v``
    ``[groups, kv_heads, P, d]`` followed by its own keys ``k``/``v`` ``[rows, kv_heads, S, d]``. ``mask``
    ``[rows, 1, 1, P + S]`` (True = attend; None: every key) hides a prompt's left padding. Query heads are
    grouped over the key heads as SDPA's ``enable_gqa`` does (head i reads key head i // (heads / kv_heads))."""
    n_rows, heads, _, d = q.shape
    kv_heads, prompt_len = prefix_k.shape[1], prefix_k.shape[2]
    per = heads // kv_heads
    q = q.reshape(n_rows, kv_heads, per, d)
    prompt_scores = rows.scatter(torch.matmul(rows.gather(q), prefix_k.transpose(-1, -2)), per)
    scores = torch.cat([prompt_scores, torch.matmul(q, k.transpose(-1, -2))], dim=-1).float().mul_(scale)
    if mask is not None:
        scores.masked_fill_(~mask.view(n_rows, 1, 1, -1), float("-inf"))
    probs = scores.softmax(dim=-1).to(q.dtype)
    prompt_probs, own_probs = probs.split([prompt_len, probs.shape[-1] - prompt_len], dim=-1)
    out = rows.scatter(torch.matmul(rows.gather(prompt_probs), prefix_v), per) + torch.matmul(own_probs, v)
    return out.reshape(n_rows, heads, 1, d)
