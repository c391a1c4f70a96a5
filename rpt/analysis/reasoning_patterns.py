"""How the policy reasons, counted cheaply: the share of responses that show each reasoning pattern, by keyword
rules on the text before the end-of-thinking marker (the paper compares RPT's patterns with the base's the same
way, arXiv 2506.08007 §4.4, with an LLM judge in place of our rules).

A response can show several patterns; one that shows none of them states its answer without derivation
("direct"). The rules are regular expressions, printed in the report beside the shares, so a reader knows exactly
what was counted: on the demo's arithmetic corpus a reasoning step is an equation (``15 + 9 = 24``), on natural
language the cue words decide.
"""

from __future__ import annotations

import re

from rpt.tasks.demonstrations import THINK_CLOSE

# pattern -> (rule, what it stands for); matched case-insensitively on the reasoning text
PATTERNS: dict[str, tuple[str, str]] = {
    "deduction": (r"=|\b(therefore|thus|hence|so)\b", "derives a result (an equation, or therefore/thus/hence/so)"),
    "breakdown": (r"\b(first|then|next|step|finally)\b", "splits the work into steps (these cue words, or two or "
                  "more `=`)"),
    "checking": (r"\b(check|verify|wait|confirm|double-check|again)\b", "re-examines a result"),
    "hypothesis": (r"\b(suppose|assume|maybe|perhaps|if|guess|let's try)\b", "proposes a candidate to test"),
    "transition": (r"\b(but|however|alternatively|instead)\b", "changes course"),
}
DIRECT = "direct"
_COMPILED = {name: re.compile(rule, re.IGNORECASE) for name, (rule, _) in PATTERNS.items()}


def reasoning_text(response: str) -> str:
    """The part of a response before its first end-of-thinking marker (all of it when there is none)."""
    return response.split(THINK_CLOSE, 1)[0]


def patterns_of(response: str) -> list[str]:
    text = reasoning_text(response)
    found = [name for name, rx in _COMPILED.items() if rx.search(text)]
    if text.count("=") >= 2 and "breakdown" not in found:  # two or more equations: a breakdown into steps
        found.append("breakdown")
    return found or [DIRECT]


def pattern_shares(responses: list[str]) -> dict[str, float]:
    """Share of ``responses`` showing each pattern (and ``direct``: none); empty input gives {}."""
    if not responses:
        return {}
    counts = dict.fromkeys([*PATTERNS, DIRECT], 0)
    for response in responses:
        for name in patterns_of(response):
            counts[name] += 1
    return {name: count / len(responses) for name, count in counts.items()}


def rules_markdown() -> str:
    return "\n".join(f"- **{name}**: {desc} — `{rule}`" for name, (rule, desc) in PATTERNS.items()) + \
        f"\n- **{DIRECT}**: none of the above (the answer stated without derivation)"
