"""Answer extraction: the final answer a response states, as the content of a ``\\boxed{...}``.

Every task reads answers the same way (RPT next-token prediction, question/answer datasets, reasoning-gym), and
dataset reference solutions (MATH) box theirs too, so the parsing lives here, in one place. It runs on whatever a
policy wrote, including degenerate outputs (thousands of unclosed ``\\boxed{``, megabytes of braces), so it is one
linear pass over the text: the cost of scoring a response never grows faster than its length.

``BoxedAnswerStop`` reads the same format while a response is being generated: it ends the response once a
``\\boxed{...}`` after the end-of-thinking marker has closed its braces. A model trained with the think format
ends there with an end-of-sequence token; a small or base model may run on and write more text (another problem,
another box), which would also change which box counts as "the last". It is a state machine over the generated
bytes (the marker and ``\\boxed{`` may span several tokens; a stack of the open braces' kinds, amortised O(1) per
byte), so it adds no quadratic re-decoding to the decode loop. A marker written inside the box starts the search
over (``extract_answer`` reads after the last marker), so the rule stops exactly when ``extract_answer`` of the text
so far first finds an answer (tested on random fragment streams), and stopping there never changes which answer it
reads.
"""

from __future__ import annotations

import re

BOX = "\\boxed{"
BOX_BYTES = BOX.encode()
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


class BoxedAnswerStop:
    def __init__(self, token_bytes, think_close: str = "</think>"):
        self.token_bytes = token_bytes  # callable: id -> bytes
        self.close = think_close.encode()
        self.keep = max(len(self.close), len(BOX_BYTES))
        self.state: list[list] = []

    def reset(self, n: int) -> None:
        # per sequence: [seen a marker, tail bytes, the braces open since the last marker (True: a box's)]
        self.state = [[False, b"", []] for _ in range(n)]

    def update(self, i: int, token_id: int) -> bool:
        """Feed sequence ``i``'s new token; True once a box opened after the last marker has closed: the moment
        ``extract_answer`` of the text so far first finds an answer (``extract_boxed`` matches braces as brackets
        and takes any closed box, one nested in an unclosed box included)."""
        st = self.state[i]
        for byte in self.token_bytes(token_id):
            ch = bytes([byte])
            st[1] = (st[1] + ch)[-self.keep:]
            if st[1].endswith(self.close):  # a (later) marker: the answer is read after it, so start over
                st[0], st[1], st[2] = True, b"", []
            elif not st[0]:
                continue
            elif ch == b"{":
                st[2].append(st[1].endswith(BOX_BYTES))
            elif ch == b"}" and st[2] and st[2].pop():
                return True
        return False
