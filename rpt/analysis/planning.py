"""Planning vs execution tokens (HICRA, arXiv 2509.03646): planning tokens are those inside "strategic grams",
the n-grams that steer a solution (deduction, branching, backtracking); everything else is execution.

The paper mines strategic grams by clustering n-grams of successful solutions; rpt takes a configurable list
(``analysis.strategic_grams``: the `grams` config group ships the demo's and an English list) or mines one the same
way from the stage's initial policy (``mine_strategic_grams``, ``analysis.mine_grams``), and tags, per response,
every token whose bytes overlap a case-insensitive match of one of them. The default list suits the demo's think
format, where the structural decisions are "reduce again" (`` = ``), "stop thinking" (``</think>``) and "commit
to an answer" (``\\boxed{``); for natural-language reasoning, `grams=english` (phrases such as "wait", "let me
check", "alternatively", "so the answer").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

_DIGITS = re.compile(r"\d+")

def _lowered(data: bytes) -> tuple[str | bytes, list[tuple[int, int]] | None]:
    """``data`` lower-cased for case-insensitive search, with the byte span of ``data`` each lowered character comes
    from (None: ASCII, lowered byte for byte). Non-ASCII text is lowered character by character (``É`` finds
    ``é``), bytes that are not UTF-8 kept as they are (a token may end inside a character)."""
    if data.isascii():
        return data.lower(), None
    lowered, spans, pos = [], [], 0
    for ch in data.decode("utf-8", errors="surrogateescape"):
        width = len(ch.encode("utf-8", errors="surrogateescape"))
        low = ch.lower()
        lowered.append(low)
        spans += [(pos, pos + width)] * len(low)
        pos += width
    return "".join(lowered), spans


def planning_mask(token_bytes: Sequence[bytes], grams: Sequence[str]) -> list[bool]:
    """One flag per token: does the token overlap any occurrence of a strategic gram (case-insensitive)?"""
    data = b"".join(token_bytes)
    text, spans = _lowered(data)
    covered = bytearray(len(data))
    for gram in grams:
        g = gram.lower() if spans is not None else gram.lower().encode("utf-8")
        start = text.find(g)
        while g and start != -1:
            first, last = (start, start + len(g)) if spans is None else (spans[start][0], spans[start + len(g) - 1][1])
            covered[first:last] = b"\x01" * (last - first)
            start = text.find(g, start + 1)
    flags, pos = [], 0
    for piece in token_bytes:
        flags.append(any(covered[pos:pos + len(piece)]))
        pos += len(piece)
    return flags


def planning_token_mask(tokens: torch.Tensor, response_mask: torch.Tensor, tokenizer,
                        grams: Sequence[str]) -> torch.Tensor:
    """``[N, T]`` bool: response tokens that are planning tokens (each distinct token's bytes looked up once)."""
    flags = [[False] * tokens.shape[1] for _ in range(tokens.shape[0])]
    piece_of: dict[int, bytes] = {}
    for row, ids, inside in zip(flags, tokens.tolist(), response_mask.tolist(), strict=True):
        where = [j for j, m in enumerate(inside) if m]
        if not where:
            continue
        for j in where:
            if ids[j] not in piece_of:
                piece_of[ids[j]] = tokenizer.token_bytes(ids[j])
        pieces = [piece_of[ids[j]] for j in where]
        for j, flag in zip(where, planning_mask(pieces, grams), strict=True):
            row[j] = flag
    return torch.tensor(flags, dtype=torch.bool, device=response_mask.device).view(response_mask.shape)


def gram_counts(texts: Sequence[str], grams: Sequence[str]) -> list[int]:
    """Occurrences of each strategic gram (case-insensitive, non-overlapping) over all ``texts``."""
    lowered = [t.lower() for t in texts]
    return [sum(t.count(g.lower()) for t in lowered) if g else 0 for g in grams]


def shannon_entropy(counts: Sequence[float]) -> float:
    """Entropy (nats) of the frequency distribution ``counts``; 0 for an empty or single-valued one. HICRA's
    *semantic entropy* is this over the strategic grams' occurrence counts in a batch of responses."""
    total = float(sum(counts))
    return -sum(c / total * math.log(c / total) for c in counts if c > 0) if total else 0.0


def mine_strategic_grams(solutions: Sequence[str], sizes: Sequence[int] = (3, 4, 5), keep: float = 0.2,
                         min_solutions: int = 2) -> list[str]:
    """Strategic grams mined from successful solutions, as HICRA does (arXiv 2509.03646) without an embedding model.

    Every word n-gram (n in ``sizes``, words split on whitespace) of every solution is clustered by its normal
    form (lower case, every digit run replaced by ``#``): n-grams that differ only in their numbers or case are one
    semantic unit. A cluster's document frequency is the number of solutions containing any of its members; the
    clusters in the top ``keep`` share by that frequency (seen in at least ``min_solutions`` solutions) are kept,
    and the strategic grams are all their members' surface forms. Deterministic: ties break by the normal form.
    """
    members: dict[str, set[str]] = {}
    frequency: dict[str, int] = {}
    for text in solutions:
        words = text.split()
        seen = set()
        for n in sizes:
            for i in range(len(words) - n + 1):
                gram = " ".join(words[i:i + n])
                key = _DIGITS.sub("#", gram.lower())
                members.setdefault(key, set()).add(gram)
                seen.add(key)
        for key in seen:
            frequency[key] = frequency.get(key, 0) + 1
    ranked = sorted((k for k in frequency if frequency[k] >= min_solutions), key=lambda k: (-frequency[k], k))
    chosen = ranked[:math.ceil(keep * len(ranked))]
    return sorted(g for key in chosen for g in members[key])
