"""Where a data source lives: a local file path or glob, or (when it names no file) a hub dataset name.

Shared by corpus ingestion (``data.source``) and the question/answer RL task (``rl_task.dataset.path``), so both
accept the same spellings and refuse the same mistakes (mixed extensions, a path that matches nothing, a directory,
empty files).
"""

from __future__ import annotations

import glob
import os

from rpt.errors import Refusal


def local_files(source: str, extensions, key: str) -> tuple[list[str], str] | None:
    """The files a path or glob ``source`` names and their one shared extension, or None when ``source`` names
    no file and looks like a hub dataset name; ``key`` names the config field in errors."""
    files = sorted(glob.glob(os.path.expanduser(source)))
    if files:
        if any(os.path.isdir(f) for f in files):
            folder = next(f for f in files if os.path.isdir(f)).rstrip(os.path.sep)
            raise Refusal(f"{key}={source} names the directory {folder!r}, not files: give the files, e.g. "
                          f"{key}='{folder}/*.jsonl'")
        exts = {os.path.splitext(f)[1].lower() for f in files}
        if len(exts) != 1 or next(iter(exts)) not in extensions:
            raise Refusal(f"{key} files must share one of {sorted(extensions)}; got {sorted(exts)}")
        if all(os.path.getsize(f) == 0 for f in files):
            raise Refusal(f"{key}={source}: {'the file is' if len(files) == 1 else 'every file is'} empty")
        return files, exts.pop()
    if os.path.sep in source or source.startswith("."):
        raise Refusal(f"{key} {source!r} matches no file (a path or a glob, e.g. 'corpus/*.jsonl')")
    return None
