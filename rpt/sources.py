"""Where a data source lives: a local file path or glob, or (when it names no file) a hub dataset name.

Shared by corpus ingestion (``data.source``) and the question/answer RL task (``rl_task.dataset.path``), so both
accept the same spellings and reject the same mistakes (mixed extensions, a path that matches nothing).
"""

from __future__ import annotations

import glob
import os


def local_files(source: str, extensions, key: str) -> tuple[list[str], str] | None:
    """The files a path or glob ``source`` names and their one shared extension, or None when ``source`` names
    no file and looks like a hub dataset name; ``key`` names the config field in errors."""
    files = sorted(glob.glob(os.path.expanduser(source)))
    if files:
        exts = {os.path.splitext(f)[1].lower() for f in files}
        if len(exts) != 1 or next(iter(exts)) not in extensions:
            raise ValueError(f"{key} files must share one of {sorted(extensions)}; got {sorted(exts)}")
        return files, exts.pop()
    if os.path.sep in source or source.startswith("."):
        raise FileNotFoundError(f"{key} {source!r} matches no file")
    return None
