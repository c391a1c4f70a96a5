"""What every stage receives: the typed config (``RootConfig``), the process runtime, the run directory and a
metrics logger."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

from rpt.config import RootConfig
from rpt.distributed import barrier
from rpt.metrics import MetricsLogger
from rpt.rundir import RunDir
from rpt.runtime import Runtime


@dataclass
class StageContext:
    cfg: RootConfig
    rt: Runtime
    rd: RunDir
    stage: str

    def metrics(self, wandb_id=None, resume_step=None, stage=None) -> MetricsLogger:
        return MetricsLogger(self.rd.metrics, stage or self.stage, self.cfg.logging, self.rd.path,
                             asdict(self.cfg), enabled=self.rt.is_main,
                             wandb_id=wandb_id, resume_step=resume_step)

    def barrier(self) -> None:
        barrier()

    def progress(self, iterable=None, **kwargs):
        from tqdm.auto import tqdm

        # a bar only on a terminal: in a log file its carriage returns are noise (the loop logs a plain line there)
        shown = self.cfg.logging.progress and self.rt.is_main and sys.stderr.isatty()
        return tqdm(iterable, disable=not shown, dynamic_ncols=True, **kwargs)
