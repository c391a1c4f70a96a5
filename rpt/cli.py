"""Command line: ``rpt <stage> [hydra overrides...]``.

Stages: prep, pretrain, select, rpt, cnt (continual next-token baseline), rl, sft (supervised baseline beside rl),
eval, lm_eval (lm-evaluation-harness benchmarks; only when asked for), report, and ``pipeline``
(all of them in order, skipping every stage whose finished marker exists, so a killed pipeline resumes where it
stopped). Every stage is the same Hydra app over one config tree (``conf/``), so any value can be overridden on
any stage, and a misspelled key is rejected with its name. The composed config becomes the typed ``RootConfig``
here, once.

A run remembers itself (rpt/run_memory.py): a call on an existing run starts from the overrides the run was made
with, and a change to what a finished stage was made with is refused. ``force=true`` starts stages over, moving
their outputs aside and the stages after them with them (rpt/force.py). A ``--multirun`` sweep whose jobs would
share a run directory is refused before any job starts (rpt/sweep.py).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m rpt.cli` (launch/slurm/rpt.sbatch): catch USR1/TERM before the imports
    from rpt.train import preemption as _preemption  # below (seconds) instead of dying of them (see the module)

    _preemption.install()

import atexit
import contextlib
import importlib
import importlib.resources
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rpt import config as config_schema
from rpt import run_memory
from rpt.errors import Refusal
from rpt.log_setup import quiet_third_party
from rpt.refusal import check_lm_eval, check_reward, preflight

log = logging.getLogger("rpt")

STAGES = ["prep", "pretrain", "proxy", "select", "rpt", "rlp", "cnt", "rl", "sft", "eval", "lm_eval", "report"]
EXTRA_STAGES = ["hf_import", "hf_export"]  # run on demand, never by `pipeline`
STARTS_A_RUN = ("prep", "hf_import", "pipeline", "bench")  # the others work on a run that exists
USAGE = (f"usage: rpt [check] <{'|'.join(STAGES + EXTRA_STAGES + ['pipeline', 'bench'])}> [key=value ...]   "
         "(rpt <stage> --help for the config; rpt check <stage> ... checks it and runs nothing)")


EXIT_REFUSED = 2  # a refused mistake (rpt/refusal.py)
_warned: set[tuple] = set()


@contextlib.contextmanager
def refusing(kinds: tuple[type[BaseException], ...], debug: bool) -> Iterator[None]:
    """Print an exception of ``kinds`` as one ``rpt:`` line and exit with status 2 (re-raise it under DEBUG)."""
    try:
        yield
    except kinds as err:
        if debug:
            raise
        logging.shutdown()
        message = " ".join(str(err).split("\n")) if str(err).count("\n") < 2 else str(err)
        print(f"rpt: {message}", file=sys.stderr)
        from rpt.train import submitit_job

        if submitit_job.active():  # a sweep point: an exception Hydra records as its failure, so the sweep ends
            raise RuntimeError(f"rpt: {message}") from None  # (a SystemExit leaves submitit no result: it waits)
        sys.exit(EXIT_REFUSED)



def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip()
    parts = Path(filename).parts
    module = parts[parts.index("site-packages") + 1] if "site-packages" in parts else Path(filename).stem
    kind = (category.__name__, module, text.split(". ")[0])
    if kind not in _warned:
        _warned.add(kind)
        print(f"warning: {category.__name__} from {module}: {' '.join(text.split())}", file=file or sys.stderr)


def one_line_warnings() -> None:
    """Python warnings as one line each, once per kind: category, module, first sentence (until
    ``log_setup.quiet_third_party`` sees DEBUG)."""
    warnings.showwarning = _one_line


def run_stage(ctx_factory, stage: str) -> dict:
    """Run one stage unless its finished marker exists; record what it was made with and write the marker when it
    completes (``force=true`` moved the forced stages' markers aside before any stage ran)."""
    ctx = ctx_factory(stage)
    if ctx.rd.is_done(stage):
        log.info("stage %s: already finished in %s (force=true to redo)", stage, ctx.rd.path)
        return ctx.rd.summary(stage)
    if stage != "hf_import":  # the backstop behind run memory: every stage builds the shape the run imported
        from rpt.model.hf_config import check_imported_shape

        check_imported_shape(ctx.cfg.model, ctx.rd)
    log.info("stage %s: starting", stage)
    t0 = time.perf_counter()
    summary = importlib.import_module(f"rpt.stages.{stage}").run(ctx)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if ctx.rt.is_main:
        run_memory.record_stage(ctx.rd, ctx.cfg, stage)
        ctx.rd.mark_done(stage, summary)
    ctx.barrier()
    log.info("stage %s: finished in %.1fs", stage, summary["seconds"])
    return summary


def given_overrides() -> list[str]:
    """This call's command-line overrides (Hydra's record of them; none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def main_from_config(composed: DictConfig) -> None:
    from rpt.train import preemption, submitit_job

    if submitit_job.active():  # a sweep point: rpt's handlers replace submitit's before anything slow is imported
        preemption.install()

    debug = str(composed.run.log_level).upper() == "DEBUG"
    with refusing((ValueError,), debug):  # any mistake found while reading the config: one line, nothing done
        cfg, rd, remembers, recalled, forced = read_config(composed, given_overrides())
    with refusing((Refusal,), debug):
        _run(cfg, rd, remembers, recalled, forced)


def read_config(composed: DictConfig, given: list[str]):
    """Hydra's composition of ``given`` → the typed, checked config of this call, with the run's memory (a
    ``ValueError`` names any mistake; nothing is written): ``(cfg, rd, remembers, recalled, forced)``."""
    from rpt import force
    from rpt.rundir import RunDir

    config_schema.RunConfig(name=composed.run.name)  # a name that is not one directory is refused first
    rd = RunDir(composed.run.root, composed.run.name)
    remembers = composed.stage != "bench"  # a benchmark neither reads nor writes a run directory
    recalled = run_memory.recall(rd, composed, given) if remembers else None
    if composed.stage == "hf_import":  # the shape comes from the checkpoint and joins the run's memory
        from rpt.model.hf_source import adopt_checkpoint_shape

        adopt_checkpoint_shape(recalled, rd.path)
    cfg = config_schema.load(recalled.config if remembers else composed)  # typed and validated once, here
    check_reward(cfg)  # the user's reward function, imported once per process, before torch
    quiet_third_party(cfg.run.log_level)
    for name in cfg.stages:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} in `stages`; choose from {STAGES}")
    forced = force.forced_stages(cfg)
    if remembers:  # every rank reads the run's memory and refuses alike, before rank 0 changes anything
        run_memory.check(cfg, rd, unchecked=forced | force.stale_after(forced, cfg))
    check_lm_eval(cfg)  # lm_eval's tasks and their data files, before any stage loads a model
    return cfg, rd, remembers, recalled, forced


def _run(cfg, rd, remembers: bool, recalled, forced: set[str]) -> None:
    # the heavy imports (torch, megatron) after the checks: a refusal comes at once
    from rpt import force, runtime
    from rpt.distributed import barrier
    from rpt.stages.context import StageContext
    from rpt.train import preemption

    preemption.install()
    rt = runtime.init(cfg.run)
    try:
        if remembers:
            barrier()
            if rt.is_main:
                run_memory.save(rd, recalled)
                if forced:
                    force.start_over(rd, forced, recalled.given, cfg)
            barrier()

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
                run_stage(factory, stage)
            report = rd.path / "report" / "report.md"  # `stages=` may leave the report out
            log.info("pipeline finished: %s", report if report.exists() else rd.path)
        else:
            run_stage(factory, cfg.stage)
        if remembers and rt.is_main:
            force.finished(rd)
    except preemption.Preempted as stop:
        from rpt.train import submitit_job

        if submitit_job.active():  # a sweep point of hydra/launcher=rpt_slurm: requeue it here, or fail it plainly
            log.warning("stage %s checkpointed at step %d on %s; requeueing the submitit job", stop.stage, stop.step,
                        stop.reason)
            submitit_job.requeue(stop, rt.is_main, preemption.timed_out(stop))  # NotRequeued: the sweep learns it
        log.warning("stage %s checkpointed at step %d on %s; exiting with %d for requeue "
                    "(re-run the same command to resume)", stop.stage, stop.step, stop.reason,
                    preemption.EXIT_REQUEUE)
        raise
    finally:
        runtime.shutdown()


config_schema.register()
# the config tree lives at the repository top level (design card) and installs as the package `rpt_conf`
# (pyproject.toml), so it is found the same way in an editable install and in a wheel
CONF_DIR = str(importlib.resources.files("rpt_conf"))
hydra_main = hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")(main_from_config)


def main() -> None:
    from hydra._internal.utils import get_args_parser

    from rpt.train import preemption

    preemption.install()  # first: a USR1/TERM while the config is read asks for a checkpoint, not the task's death
    atexit.register(preemption.exiting)  # last: one while the process exits must not kill it (see there)

    checking = sys.argv[1:2] == ["check"]  # `rpt check <stage> ...`: the config refused or passed, nothing run
    if checking:
        preemption.uninstall()  # it trains nothing: a TERM or USR1 ends it as usual
        del sys.argv[1]
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
    parsed = get_args_parser().parse_args(sys.argv[1:])
    if parsed.multirun:  # a sweep's launching process trains nothing: a TERM or USR1 ends it as usual
        preemption.uninstall()
    one_line_warnings()
    with refusing((ValueError,), debug="run.log_level=DEBUG" in parsed.overrides):
        preflight(stage, parsed.overrides, parsed.multirun, CONF_DIR, STARTS_A_RUN)
        if checking:
            if parsed.multirun:
                raise ValueError("rpt check checks one call, not a --multirun sweep (a sweep checks every point "
                                 "before it submits any job)")
            print(check(stage, parsed.overrides))
            return
        if (parsed.cfg in ("job", "all") or parsed.help) and not parsed.multirun:
            if parsed.help:
                print(f"{USAGE}\n\nThe config `rpt {stage}` would run with (the run's remembered overrides, then "
                      f"these):\n")
            print(remembered_config(parsed.overrides, parsed.resolve))
            return
    hydra_main()


@contextlib.contextmanager
def composed_config(overrides: list[str]) -> Iterator[DictConfig]:
    """Hydra's composition of ``overrides`` outside the app (nothing written), its ``hydra`` node removed; run
    memory's ``recall`` composes again inside this context."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(composed)  # resolves ${hydra:runtime.choices.<group>} (remedies' run.name)
        try:
            with open_dict(composed):
                del composed["hydra"]
            yield composed
        finally:
            HydraConfig.instance().cfg = None


def remembered_config(overrides: list[str], resolve: bool = False) -> str:
    """The config a call would run with, as YAML: the defaults, the run's remembered overrides, then ``overrides``
    (what ``--cfg job`` and ``--help`` show; Hydra's own would leave the run's memory out)."""
    from omegaconf import OmegaConf

    from rpt.rundir import RunDir

    with composed_config(overrides) as composed:
        recalled = run_memory.recall(RunDir(composed.run.root, composed.run.name), composed, overrides)
        return OmegaConf.to_yaml(recalled.config, resolve=resolve)


def check(stage: str, overrides: list[str]) -> str:
    """``rpt check <stage> ...``: after ``preflight``, the config the call would run with (the run's memory, then
    ``overrides``) read and checked as the call itself reads it (``read_config``), nothing written; a mistake, Hydra's
    own included (a key the config lacks, a value of the wrong type), is a ``ValueError`` of one line. Returns the
    line that says it passed. launch/slurm/rpt.sbatch runs it once before ``srun``."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rpt.refusal import composition_error

    given = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]  # Hydra's own keys: not the run's
    try:
        with composed_config(overrides) as composed:
            rd = read_config(composed, given)[1]
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from err
    return f"ok: the config of `rpt {stage}` on run {rd.path} composes and passes rpt's checks"


if __name__ == "__main__":
    main()
