"""The run directory contract (docs/architecture.md): paths of every artifact, atomic writes, finished-stage markers.

A stage is finished when ``done/<stage>.json`` exists; it is written last and atomically (temp file + rename),
so a killed stage never leaves a marker or a half-written file that a later stage would trust. The run's memory
(rpt/run_memory.py) lives beside it: ``overrides.yaml`` (the overrides the run was made with) and
``stage_config/<stage>.json`` (what a finished stage fixed); ``force=true`` moves outputs to ``superseded/``.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class RunDir:
    def __init__(self, root: str | os.PathLike, name: str):
        self.path = Path(root) / name

    # --- locations -------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def positions(self) -> Path:
        return self.path / "positions"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    def checkpoints(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def done_marker(self, stage: str) -> Path:
        return self.path / "done" / f"{stage}.json"

    @property
    def overrides(self) -> Path:
        return self.path / "overrides.yaml"

    def stage_config(self, stage: str) -> Path:
        return self.path / "stage_config" / f"{stage}.json"

    # --- stage markers ---------------------------------------------------------------------
    def is_done(self, stage: str) -> bool:
        return self.done_marker(stage).exists()

    def mark_done(self, stage: str, summary: dict[str, Any]) -> None:
        write_json(self.done_marker(stage), summary)

    def summary(self, stage: str) -> dict[str, Any]:
        return read_json(self.done_marker(stage))

    def require(self, stage: str) -> None:
        if not self.is_done(stage):
            from rpt.errors import MissingInput

            raise MissingInput(f"stage '{stage}' has not finished in {self.path}; run `rpt {stage}` first "
                               f"(or `rpt pipeline`)")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, rows) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
