"""Answer extraction: the final answer a response states, as the content of a ``\\boxed{...}``.

Every task reads answers the same way (RPT next-token prediction, question/answer datasets, reasoning-gym), and
dataset reference solutions (MATH) box theirs too, so the parsing lives here, in one place. It runs on whatever a
policy wrote, including degenerate outputs (thousands of unclosed ``\\boxed{``, megabytes of braces), so it is one
linear pass over the text: the cost of scoring a response never grows faster than its length.
"""

from __future__ import annotations

import re

BOX = "\\boxed{"
_TOKENS = re.compile(re.escape(BOX) + r"|[{}]")  # a box opener (its "{" included), or a single brace
_PLAIN = -1  # stack marker for a "{" that does not open a box


def extract_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` in ``text``, or None if there is none.

    Braces are matched as brackets: a box's content runs from its ``{`` to the ``}`` that closes it, nested
    braces kept (``\\boxed{a{b}c}`` -> ``a{b}c``). A box whose braces never close is skipped and an earlier
    balanced one counts (``\\boxed{1} \\boxed{unclosed`` -> ``1``). "Last" means the balanced box that *opens*
    last, so a box nested inside another box wins over its parent (``\\boxed{1 + \\boxed{2}}`` -> ``2``), and so
    does a closed box inside an unclosed one (``\\boxed{1 \\boxed{2}`` -> ``2``). A ``}`` with no open brace
    before it closes nothing and is ignored; an extra ``}`` after a box is outside it (``\\boxed{1}}`` -> ``1``).

    One left-to-right pass over the braces: a stack holds the open braces (the start of a box's content, or
    ``_PLAIN``), and each ``}`` closes the top one; of the boxes that close, the one with the latest start is kept.
    """
    stack: list[int] = []
    best: tuple[int, int] | None = None  # (content start, content end) of the latest-opening closed box
    for m in _TOKENS.finditer(text):
        token = m.group()
        if token == "}":
            if stack and (start := stack.pop()) != _PLAIN and (best is None or start > best[0]):
                best = (start, m.start())
        else:
            stack.append(m.end() if token == BOX else _PLAIN)
    return None if best is None else text[best[0]:best[1]]


def extract_answer(response: str, think_close: str = "</think>") -> str | None:
    """The prediction in a response: the last balanced ``\\boxed{}`` (see ``extract_boxed``) after the last
    end-of-thinking marker. No marker, or no balanced box after it, is no answer (None)."""
    _, marker, tail = response.rpartition(think_close)
    if not marker:
        return None
    return extract_boxed(tail)
