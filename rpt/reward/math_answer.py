"""A math answer checker for question/answer datasets (GSM8K, MATH, OmniMATH style): is a model's final answer
equivalent to the reference?

Why our own: the common checkers (``math_verify``, ``sympy``-based graders) pull heavy dependencies and parse
arbitrary LaTeX; RL on verifiable answers needs a fast, predictable rule. This one is deliberately conservative.
Both answers are normalised: LaTeX wrappers (``\\text{}``, ``\\mathrm{}``, ... up to 8 deep), ``$``, degrees,
``\\left``/``\\right`` and a trailing period are dropped; whitespace is removed except a gap between two digits, which
stays one space (``1 2`` is not ``12``); LaTeX spaces (``\\,`` ``\\;`` ``\\ ``) count as whitespace and ``\\!`` as
nothing; thousands separators are removed when the whole answer is a number grouped in threes by commas, ``{,}`` or
spaces (``1,000``, ``1{,}000``, ``1\\,000`` are ``1000``; a comma followed by a space separates a list: ``1, 234`` is
not ``1234``). Then they match if the normalised strings are equal, or if both are numbers of equal value. Numbers are
integers, decimals with an optional exponent (|exponent| <= 100, at most 1000 characters: anything bigger is text),
``a/b`` and ``\\frac{a}{b}`` with a non-zero denominator; a trailing % is dropped. Values compare exactly, with one
tolerance: a decimal matches a fraction that has no finite decimal form (``0.333333`` for 1/3) when they agree to a
relative 1e-6. Anything else (expressions, intervals, sets) must match as normalised text. False negatives are
possible for exotic equivalent forms; false positives are not intended. Nothing a model writes makes it raise or run
longer than linear time in its length.

Reference extraction handles the usual dataset conventions: GSM8K's ``#### 42`` and MATH's ``\\boxed{42}``
inside a worked solution; otherwise the whole reference string is the answer.
"""

from __future__ import annotations

import re
from fractions import Fraction

from rpt.reward.answer import extract_boxed

MAX_UNWRAP = 8  # nesting depth of \text{...} wrappers removed (each level is one pass over the answer)
MAX_NUMBER_CHARS = 1000  # longer numerals are text (int() refuses over 4300 digits; exact text equality still holds)
MAX_EXPONENT = 100  # 1e99999999 is text: its exact value would not fit in memory
TOLERANCE = Fraction(1, 10**6)  # relative, for a decimal approximating a non-terminating fraction

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\{([^{}]*)\}")
_SPACES = re.compile(r"\s+")
_NON_DIGIT_GAP = re.compile(r" (?![0-9])|(?<![0-9]) ")  # a space not between two digits
_THOUSANDS = re.compile(r"-?[0-9]{1,3}(?:(?:,[0-9]{3})+|(?: [0-9]{3})+)(?:\.[0-9]+)?")
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?")
_RATIO = re.compile(r"(-?[0-9]+)/([0-9]+)")
_FRAC = re.compile(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_SIMPLE_FRAC = re.compile(r"(-?)\\frac([0-9])([0-9])")  # \frac12


def reference_answer(reference: str) -> str:
    """The final answer inside a dataset's reference solution (GSM8K ``####``, a ``\\boxed{}``, or all of it)."""
    if "####" in reference:
        return reference.rsplit("####", 1)[1].strip()
    boxed = extract_boxed(reference)
    return boxed.strip() if boxed is not None else reference.strip()


def normalize(answer: str) -> str:
    """The comparable form of an answer (see the module docstring for the rules)."""
    s = answer.strip()
    s = s.replace("\\!", "").replace("\\,", " ").replace("\\;", " ").replace("\\ ", " ").replace("{,}", ",")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = s.replace("$", "").replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "%")
    for _ in range(MAX_UNWRAP):  # bounded: each pass unwraps one nesting level
        unwrapped = _WRAPPERS.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    spaced = _SPACES.sub(" ", s)
    s = _NON_DIGIT_GAP.sub("", spaced)
    s = s.rstrip(".")
    if s.startswith("+"):
        s = s[1:]
    if _THOUSANDS.fullmatch(s) and ", " not in spaced:  # "1, 234" is a list of two numbers, not 1234
        s = s.replace(",", "").replace(" ", "")
    return s


def _literal(s: str) -> Fraction | None:
    """An integer, a decimal (optional exponent) or ``a/b``, as an exact number; None if ``s`` is not one."""
    if len(s) > MAX_NUMBER_CHARS:
        return None
    if (m := _DECIMAL.fullmatch(s)) is not None:
        if m.group(1) is not None and abs(int(m.group(1))) > MAX_EXPONENT:
            return None
        return Fraction(s)
    if (m := _RATIO.fullmatch(s)) is not None and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    return None


def as_number(s: str) -> Fraction | None:
    """A normalised answer as an exact number, if it is one."""
    s = s.removesuffix("%")  # "25%" and "25" are the same answer (as MATH graders take it)
    if (m := _FRAC.fullmatch(s) or _SIMPLE_FRAC.fullmatch(s)) is not None:
        num, den = _literal(m.group(2)), _literal(m.group(3))
        if num is None or not den:  # den None or zero
            return None
        return (-1 if m.group(1) else 1) * num / den
    return _literal(s)


def _terminates(x: Fraction) -> bool:
    """Whether ``x`` has a finite decimal expansion (its denominator has no prime factors but 2 and 5)."""
    den = x.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def _approximates(written: str, value: Fraction, exact: Fraction) -> bool:
    """``written`` is a decimal within a relative ``TOLERANCE`` of a fraction no decimal can equal."""
    written = written.removesuffix("%")
    is_decimal = _DECIMAL.fullmatch(written) is not None and any(c in written for c in ".eE")  # not an integer
    return is_decimal and not _terminates(exact) and abs(value - exact) <= TOLERANCE * abs(exact)


def answers_match(prediction: str | None, reference: str) -> bool:
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
    return a == b or _approximates(pred, a, b) or _approximates(ref, b, a)
