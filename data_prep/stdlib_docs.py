"""A real-text corpus with nothing to download: the documentation of Python's standard library (module, class and
function docstrings), one document per module, as jsonl ``{"text": ...}``.

Why this corpus: the real-model experiment (README, "A real model on a laptop") and its opt-in test tier need prose a
real pretrained model has seen the like of (English technical writing, code in it), on a machine with no internet.
Every machine that runs rpt has a Python, so the corpus is the same wherever Python is the same version, and it is
written by people, not generated. ``python -m data_prep.stdlib_docs out.jsonl`` writes it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import warnings
from pathlib import Path

# pure-Python modules with long, prose-heavy docstrings (present on every CPython 3.11+ install)
MODULES = ("argparse", "asyncio.locks", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
           "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fnmatch", "fractions",
           "functools", "getopt", "gettext", "glob", "heapq", "hmac", "html.parser", "http.client", "imaplib",
           "inspect", "ipaddress", "json.decoder", "locale", "logging", "mailbox", "mimetypes", "numbers", "optparse",
           "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "shlex", "shutil", "smtplib",
           "socketserver", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
           "timeit", "tokenize", "traceback", "typing", "unittest.case", "urllib.parse", "uuid", "warnings",
           "weakref", "zipfile")


def module_text(name: str, max_chars: int) -> str | None:
    """A module's docstring followed by its public classes' and functions' docstrings, cut at ``max_chars``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(name)
        except ImportError:
            return None
    parts = [inspect.getdoc(module) or ""]
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                parts.append(f"{attr}: {doc}")
    text = "\n\n".join(p for p in parts if p).strip()
    return text[:max_chars] if len(text) >= 200 else None


def documents(max_chars: int = 6000, modules=MODULES) -> list[str]:
    return [t for t in (module_text(m, max_chars) for m in modules) if t]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .jsonl file to write")
    parser.add_argument("--max-chars", type=int, default=6000, help="longest document (characters)")
    args = parser.parse_args(argv)
    docs = documents(args.max_chars)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    logging.getLogger(__name__).warning("%d documents, %d characters -> %s", len(docs), sum(map(len, docs)), args.out)


if __name__ == "__main__":
    main()
