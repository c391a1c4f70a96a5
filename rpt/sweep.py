"""A ``--multirun`` sweep gives every job its own run directory, or it is refused before any job starts.

Every job of a sweep is a whole run of its own (``runs/<run.name>``: markers, checkpoints, remembered overrides),
so two jobs with one run.name would share it: the second would find the first one's stages finished and skip them.
Before Hydra launches anything, the CLI expands the sweep as Hydra's basic sweeper does, composes each job's config
and resolves its run directory (``run.name`` may interpolate the swept values, e.g. ``'run.name=seed${run.seed}'``
or the remedies recipe's ``remedies_${hydra:runtime.choices.algo}``). Jobs that would share one are refused with
the fix: a run.name that names the swept keys.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser

from rpt.config import RunConfig

log = logging.getLogger(__name__)


class SharedRunDir(ValueError):
    """Two jobs of a sweep would write to one run directory."""


def _jobs(overrides: list[str]) -> list[list[str]]:
    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def _compose(job: list[str], config_name: str):
    from hydra import compose

    parser = OverridesParser.create()
    app_overrides = [o for o in job if not parser.parse_override(o).is_hydra_override()]
    return compose(config_name=config_name, overrides=app_overrides, return_hydra_config=True)


def job_run_dirs(overrides: list[str], config_dir: str, config_name: str = "config") -> list[tuple[Path, list[str]]]:
    """Each job's run directory and overrides, as the sweep would launch them (sweeper params from the config too)."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        jobs = _jobs(overrides)
        params = _compose(jobs[0], config_name).hydra.sweeper.get("params") or {}
        if params:
            jobs = _jobs([f"{k}={v}" for k, v in params.items()] + overrides)
        found = []
        try:
            for job in jobs:
                cfg = _compose(job, config_name)
                HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices.<group>} for this job
                RunConfig(name=cfg.run.name)  # refuses a name that is not one directory, before Hydra makes it
                _check_schema(cfg)  # a value the schema refuses: here, not in the job after its queue wait
                found.append((Path(cfg.run.root) / cfg.run.name, job))
        finally:
            HydraConfig.instance().cfg = None
        return found


def _check_schema(cfg) -> None:
    """The schema's checks on one job's config (ValueError naming the value), as a single run's preflight does."""
    from omegaconf import open_dict

    from rpt.config import load

    app = cfg.copy()
    with open_dict(app):
        del app["hydra"]
    load(app)


def _swept_keys(jobs: list[list[str]]) -> list[str]:
    parser = OverridesParser.create()
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            parsed = parser.parse_override(o)
            values.setdefault(parsed.get_key_element(), set()).add(parsed.get_value_element_as_str())
    return [k for k, v in values.items() if len(v) > 1 or k == "run.name"]


def check_distinct(overrides: list[str], config_dir: str, config_name: str = "config") -> None:
    """Refuse a sweep whose jobs would share a run directory (a SharedRunDir naming them and the fix)."""
    if any(OverridesParser.create().parse_override(o).key_or_group == "hydra/sweeper" for o in overrides):
        log.warning("a sweeper other than Hydra's basic one: rpt cannot check that its jobs get distinct run.names")
        return
    jobs = job_run_dirs(overrides, config_dir, config_name)
    by_dir: dict[Path, list[list[str]]] = {}
    for run_dir, job in jobs:
        by_dir.setdefault(run_dir, []).append(job)
    shared = {d: js for d, js in by_dir.items() if len(js) > 1}
    if not shared:
        return
    swept = [k for k in _swept_keys([j for js in shared.values() for j in js]) if k != "run.name"]
    lines = []
    for run_dir, js in shared.items():
        shown = ["; ".join(o for o in job if o.split("=", 1)[0].lstrip("+~") in swept) or "(same overrides)"
                 for job in js]
        lines.append(f"  {run_dir}: {len(js)} jobs ({' | '.join(shown)})")
    example = "_".join(_interpolation(k) for k in swept) or "${hydra:job.num}"
    name = next(iter(shared)).name
    raise SharedRunDir(
        "this sweep's jobs would share run directories (the second job would find the first one's stages "
        "finished and skip them):\n" + "\n".join(lines) + "\nGive every job its own run.name from the swept "
        f"values, e.g. 'run.name={name}_{example}'")


def _interpolation(key: str) -> str:
    """An interpolation of a swept key's value: a config value, or the chosen entry of a config group."""
    bare = key.lstrip("+~")
    return f"${{{bare}}}" if "." in bare else f"${{hydra:runtime.choices.{bare}}}"
