"""Command line: ``rpt <stage> [hydra overrides...]``.

Stages: prep, pretrain, select, rpt, cnt (continual next-token baseline), rl, sft (supervised baseline beside rl),
eval, report, and ``pipeline``
(all of them in order, skipping every stage whose finished marker exists, so a killed pipeline resumes where it
stopped). Every stage is the same Hydra app over one config tree (``conf/``), so any value can be overridden on
any stage, ``--multirun`` sweeps work, and a misspelled key is rejected with its name. The composed config becomes
the typed ``RootConfig`` here, once.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import json
import logging
import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from rpt import config as config_schema

log = logging.getLogger("rpt")

STAGES = ["prep", "pretrain", "select", "rpt", "cnt", "rl", "sft", "eval", "report"]
EXTRA_STAGES = ["hf_import", "hf_export"]  # run on demand, never by `pipeline`
USAGE = (f"usage: rpt <{'|'.join(STAGES + EXTRA_STAGES + ['pipeline', 'bench'])}> [key=value ...]   "
         "(rpt <stage> --help for the config)")


def run_stage(ctx_factory, stage: str, force: bool) -> dict:
    """Run one stage unless its finished marker exists; write the marker when it completes."""
    ctx = ctx_factory(stage)
    if ctx.rd.is_done(stage) and not force:
        log.info("stage %s: already finished in %s (force=true to redo)", stage, ctx.rd.path)
        return ctx.rd.summary(stage)
    log.info("stage %s: starting", stage)
    t0 = time.perf_counter()
    summary = importlib.import_module(f"rpt.stages.{stage}").run(ctx)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if ctx.rt.is_main:
        ctx.rd.mark_done(stage, summary)
    ctx.barrier()
    log.info("stage %s: finished in %.1fs", stage, summary["seconds"])
    return summary


def main_from_config(composed: DictConfig) -> None:
    from rpt import runtime
    from rpt.rundir import RunDir, write_text
    from rpt.stages.context import StageContext

    cfg = config_schema.load(composed)  # typed and validated once, here; stages get dataclasses
    logging.getLogger().setLevel(cfg.run.log_level)
    for name in cfg.stages:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} in `stages`; choose from {STAGES}")
    from rpt.train import preemption

    preemption.install()
    rt = runtime.init(cfg.run)
    rd = RunDir(cfg.run.root, cfg.run.name)
    try:
        if rt.is_main and cfg.stage != "bench":
            write_text(rd.path / "config.yaml", OmegaConf.to_yaml(composed, resolve=True))

        def factory(stage):
            return StageContext(cfg=cfg, rt=rt, rd=rd, stage=stage)

        if cfg.stage == "bench":
            from rpt.bench.run import run_bench

            with contextlib.redirect_stdout(sys.stderr):  # peers' prints must not corrupt the JSON on stdout
                result = run_bench(cfg, rt)
            if rt.is_main:
                print(json.dumps(result, indent=2))
        elif cfg.stage == "pipeline":
            for stage in cfg.stages:
                run_stage(factory, stage, cfg.force)
            log.info("pipeline finished: %s", rd.path / "report" / "report.md")
        else:
            run_stage(factory, cfg.stage, cfg.force)
    except preemption.Preempted as stop:
        log.warning("stage %s checkpointed at step %d on a preemption signal; exiting with %d for requeue "
                    "(re-run the same command to resume)", stop.stage, stop.step, preemption.EXIT_REQUEUE)
        raise
    finally:
        runtime.shutdown()


config_schema.register()
# the config tree lives at the repository top level (design card) and installs as the package `rpt_conf`
# (pyproject.toml), so it is found the same way in an editable install and in a wheel
CONF_DIR = str(importlib.resources.files("rpt_conf"))
hydra_main = hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")(main_from_config)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    stage = sys.argv[1]
    if stage not in STAGES + EXTRA_STAGES + ["pipeline", "bench"]:
        print(f"rpt: unknown stage {stage!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    args = sys.argv[2:]
    # `stage=` joins the overrides, which argparse takes as one run: before the first, or last if there are none
    # (so flags such as `--multirun` or `--cfg job` may come before or after them)
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
    sys.argv = [sys.argv[0], *args[:first], f"stage={stage}", *args[first:]]
    hydra_main()


if __name__ == "__main__":
    main()
