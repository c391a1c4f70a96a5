"""The RPT reward (arXiv 2506.08007, Eq. 3) and answer extraction.

Answer: the whole content of the last ``\\boxed{...}`` after the end-of-thinking marker (nested braces kept);
no marker, no box, or an unbalanced box → no answer. Reward: with B the UTF-8 bytes of the ground-truth remainder
(from the selected position on, as far as it was stored) and L the cumulative byte lengths of its tokens, a
prediction ŷ of l bytes earns 1 iff ŷ == B[:l] and l ∈ L (l = 0 is not a prediction); otherwise 0. A prediction
may span several tokens but must end on a ground-truth token boundary.
"""

from __future__ import annotations

from typing import Optional, Sequence

BOX = "\\boxed{"


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last balanced ``\\boxed{...}`` in ``text``."""
    start = text.rfind(BOX)
    while start != -1:
        depth, i = 1, start + len(BOX)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(BOX):i - 1]
        start = text.rfind(BOX, 0, start)
    return None


def extract_answer(response: str, think_close: str = "</think>") -> Optional[str]:
    """The prediction in a response: last ``\\boxed{}`` after the last end-of-thinking marker."""
    if think_close not in response:
        return None
    return extract_boxed(response.rsplit(think_close, 1)[1])


def prefix_reward(prediction: Optional[str | bytes], target_token_bytes: Sequence[bytes]) -> float:
    if prediction is None:
        return 0.0
    pred = prediction.encode("utf-8") if isinstance(prediction, str) else prediction
    if not pred:
        return 0.0
    remainder = b"".join(target_token_bytes)
    boundary, boundaries = 0, set()
    for piece in target_token_bytes:
        boundary += len(piece)
        boundaries.add(boundary)
    return 1.0 if len(pred) in boundaries and remainder.startswith(pred) else 0.0
