"""What a run's log shows: rpt's own lines, and one line per kind of third-party warning.

A smoke run logged about 267 lines, 190 of them megatron's: its INFO chatter (DDP bucket dumps, dataset index
builds) and four two-line Python warnings that Transformer Engine and Apex are not installed. At any level but DEBUG,
megatron's loggers show warnings and errors only, and a Python warning prints as one ``warning:`` line, once per
kind (its category, module and first sentence); ``run.log_level=DEBUG`` shows everything as it comes.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

QUIET = ("megatron",)  # third-party loggers that speak at INFO about their internals
_seen: set[tuple] = set()


def quiet_third_party(level: str) -> None:
    logging.getLogger().setLevel(level)
    debug = logging.getLevelName(level) == logging.DEBUG
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    if debug:
        warnings.showwarning = _original


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip()
    parts = Path(filename).parts
    module = parts[parts.index("site-packages") + 1] if "site-packages" in parts else Path(filename).stem
    kind = (category.__name__, module, text.split(". ")[0])
    if kind in _seen:
        return
    _seen.add(kind)
    print(f"warning: {category.__name__} from {module}: {' '.join(text.split())}", file=file or sys.stderr)


_original = warnings.showwarning


def one_line_warnings() -> None:
    """Python warnings as one line each, once per kind (until ``quiet_third_party`` sees DEBUG)."""
    warnings.showwarning = _one_line
