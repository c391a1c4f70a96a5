"""A math answer checker for question/answer datasets (GSM8K, MATH, OmniMATH style): is a model's final answer
equivalent to the reference?

Why our own: the common checkers (``math_verify``, ``sympy``-based graders) pull heavy dependencies and parse
arbitrary LaTeX; RL on verifiable answers needs a fast, predictable rule. This one is deliberately conservative:
both answers are normalised (LaTeX wrappers, units of text, spacing, thousands separators, trailing period), then
they match if the normalised strings are equal, or if both parse as numbers (integers, decimals, ``a/b``,
``\\frac{a}{b}``; a trailing % is dropped) that agree to a relative 1e-6. Anything else (expressions, intervals, sets) must
match as normalised text. False negatives are possible for exotic equivalent forms; false positives are not
intended.

Reference extraction handles the usual dataset conventions: GSM8K's ``#### 42`` and MATH's ``\\boxed{42}``
inside a worked solution; otherwise the whole reference string is the answer.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

from rpt.reward.next_token import extract_boxed

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_SIMPLE_FRAC = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")  # \frac12
_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)(e-?\d+)?$")


def reference_answer(reference: str) -> str:
    """The final answer inside a dataset's reference solution (GSM8K ``####``, a ``\\boxed{}``, or all of it)."""
    if "####" in reference:
        return reference.rsplit("####", 1)[1].strip()
    boxed = extract_boxed(reference)
    return boxed.strip() if boxed is not None else reference.strip()


def normalize(answer: str) -> str:
    s = answer.strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = s.replace("$", "").replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "%")
    while (unwrapped := _WRAPPERS.sub(r"\1", s)) != s:
        s = unwrapped
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # thousands separators
        s = s.replace(",", "")
    if s.startswith("+"):
        s = s[1:]
    return s


def as_number(s: str) -> Optional[Fraction]:
    """A normalised answer as an exact number, if it is one."""
    s = s.removesuffix("%")  # "25%" and "25" are the same answer (as MATH graders take it)
    value: Optional[Fraction] = None
    if _NUMBER.match(s):
        value = Fraction(s)
    elif (m := _FRAC.match(s) or _SIMPLE_FRAC.match(s)) is not None:
        num, den = as_number(m.group(2)), as_number(m.group(3))
        if num is not None and den:
            value = (-1 if m.group(1) else 1) * num / den
    elif re.fullmatch(r"-?\d+/\d+", s) and not s.endswith("/0"):
        value = Fraction(s)
    return value


def answers_match(prediction: Optional[str], reference: str) -> bool:
    """True when ``prediction`` (a model's final answer) is equivalent to the reference answer."""
    if prediction is None:
        return False
    pred, ref = normalize(prediction), normalize(reference)
    if not pred:
        return False
    if pred == ref:
        return True
    a, b = as_number(pred), as_number(ref)
    if a is None or b is None:
        return False
    return abs(a - b) <= Fraction(1, 10**6) * max(abs(b), Fraction(1))
