"""Planning vs execution tokens (HICRA, arXiv 2509.03646): planning tokens are those inside "strategic grams",
the n-grams that steer a solution (deduction, branching, backtracking); everything else is execution.

The paper mines strategic grams by clustering n-grams of successful solutions; we take a configurable list
(``analysis.strategic_grams``) and tag, per response, every token whose bytes overlap a case-insensitive match of
one of them. The default list suits the demo's think format, where the structural decisions are "reduce again"
(`` = ``), "stop thinking" (``</think>``) and "commit to an answer" (``\\boxed{``); for natural-language
reasoning use phrases such as "wait", "let me check", "alternatively", "but", "so the answer".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEMO_GRAMS = [" = ", "</think>", "\\boxed{"]
REASONING_GRAMS = ["wait", "let me check", "let me verify", "alternatively", "but ", "however", "so the answer",
                   "first,", "we need to", "on second thought", "this means", "therefore"]


def planning_mask(token_bytes: Sequence[bytes], grams: Sequence[str]) -> list[bool]:
    """One flag per token: does the token overlap any occurrence of a strategic gram?"""
    text = b"".join(token_bytes).lower()
    covered = bytearray(len(text))
    for gram in grams:
        g = gram.lower().encode("utf-8")
        start = text.find(g)
        while g and start != -1:
            covered[start:start + len(g)] = b"\x01" * len(g)
            start = text.find(g, start + 1)
    flags, pos = [], 0
    for piece in token_bytes:
        flags.append(any(covered[pos:pos + len(piece)]))
        pos += len(piece)
    return flags


def planning_token_mask(tokens: torch.Tensor, response_mask: torch.Tensor, tokenizer,
                        grams: Sequence[str]) -> torch.Tensor:
    """``[N, T]`` bool: response tokens that are planning tokens."""
    out = torch.zeros_like(response_mask)
    for i in range(tokens.shape[0]):
        idx = response_mask[i].nonzero().squeeze(-1)
        if idx.numel() == 0:
            continue
        flags = planning_mask([tokenizer.token_bytes(int(t)) for t in tokens[i, idx]], grams)
        out[i, idx] = torch.tensor(flags, dtype=torch.bool)
    return out
