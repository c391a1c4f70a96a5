"""The RPT reward (arXiv 2506.08007, Eq. 3): prefix matching of a predicted continuation against the corpus.

With B the UTF-8 bytes of the ground-truth remainder (from the selected position on, as far as it was stored) and
L the cumulative byte lengths of its tokens, a prediction ŷ of l bytes earns 1 iff ŷ == B[:l] and l ∈ L (l = 0 is
not a prediction); otherwise 0. A prediction may span several tokens but must end on a ground-truth token boundary.
The prediction is the response's boxed answer, read by ``rpt.reward.answer.extract_answer``.
"""

from __future__ import annotations

from collections.abc import Sequence


def prefix_reward(prediction: str | bytes | None, target_token_bytes: Sequence[bytes]) -> float:
    """1.0 iff ``prediction`` is a non-empty byte prefix of the target that ends on one of its token boundaries."""
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
