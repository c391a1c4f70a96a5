"""What a run's log shows: rpt's own lines, and one line per kind of third-party warning.

A smoke run logged about 267 lines, 190 of them megatron's: its INFO chatter (DDP bucket dumps, dataset index
builds) and four two-line Python warnings that Transformer Engine and Apex are not installed. At any level but DEBUG,
megatron's loggers show warnings and errors only; the CLI prints a Python warning as one ``warning:`` line, once per
kind (``cli.one_line_warnings``); ``run.log_level=DEBUG`` shows everything as it comes.
"""

from __future__ import annotations

import logging
import warnings

QUIET = ("megatron",)  # third-party loggers that speak at INFO about their internals
ORIGINAL_SHOWWARNING = warnings.showwarning


def quiet_third_party(level: str) -> None:
    logging.getLogger().setLevel(level)
    debug = logging.getLevelName(level) == logging.DEBUG
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    if debug:
        warnings.showwarning = ORIGINAL_SHOWWARNING
