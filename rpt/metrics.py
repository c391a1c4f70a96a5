"""Step metrics: one JSON object per line in ``metrics.jsonl`` and the same keys to W&B.

W&B runs offline by default (no key, no network); ``logging.wandb_mode=online`` syncs live, ``disabled`` skips it.
The W&B run id is kept in the checkpoint so a resumed stage continues the same W&B run. Only rank 0 writes.
On resume, rows of steps at or after the resume point are dropped first, so a killed-and-resumed stage leaves
exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, path: Path, stage: str, cfg_logging, run_dir: Path, config: dict, enabled: bool,
                 wandb_id: str | None = None, resume_step: int | None = None):
        self.path, self.stage, self.enabled = Path(path), stage, enabled
        self._wandb = None
        self.wandb_id = wandb_id
        if not enabled:
            return
        if resume_step is not None:
            self._truncate(resume_step)
        if cfg_logging.wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_id = wandb_id or secrets.token_hex(4)
            self._wandb = wandb.init(project=cfg_logging.wandb_project, entity=cfg_logging.wandb_entity,
                                     name=f"{run_dir.name}-{stage}", group=run_dir.name, job_type=stage,
                                     id=self.wandb_id, resume="allow", mode=cfg_logging.wandb_mode,
                                     dir=str(run_dir), config=config)

    def _truncate(self, step: int) -> None:
        """Drop this stage's rows with step >= ``step`` (they will be logged again)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and not (json.loads(line).get("stage") == self.stage
                                         and json.loads(line).get("step", -1) >= step)]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"stage": self.stage, "step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in row.items() if k not in ("stage", "step")},
                            step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Example rollouts as a W&B table (``<stage>/samples``); the JSONL copy is the training loop's."""
        if self._wandb is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        table = wandb.Table(columns=columns, data=[[_plain(r.get(c)) for c in columns] for r in rows])
        self._wandb.log({f"{self.stage}/samples": table}, step=step)

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        """A directory or file as a W&B artifact (e.g. the report)."""
        if self._wandb is None:
            return
        import wandb

        artifact = wandb.Artifact(name, type=kind)
        if Path(path).is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self._wandb.log_artifact(artifact)

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update({f"{self.stage}/{k}": _plain(v) for k, v in values.items()})

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def read_metrics(path: Path, stage: str | None = None) -> list[dict]:
    if not Path(path).exists():
        return []
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if stage is None or r.get("stage") == stage]
