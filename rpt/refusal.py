"""Mistakes in what was asked are refused in one line that names the fix, before any work where possible.

``Refusal`` (``rpt.errors``) marks such a mistake where it is found during the work (a corpus with no usable record,
a run that does not exist); every ``ValueError`` raised while the configuration is read and checked is one too.
The CLI prints the message as ``rpt: <message>`` and exits with status 2 (``cli.refusing``), without a traceback,
which ``run.log_level=DEBUG`` keeps.
``preflight`` runs before Hydra creates the run directory (``hydra.run.dir``), so a refused call leaves nothing
behind: it catches the two command-line slips Hydra lets through (a config group option that does not exist:
``experiment=smok``, which the optional ``experiment`` default would compose as nothing; and a ``+key=value`` that
adds a key no config section has: ``+pretrain.stpes=3`` would be kept and ignored), then validates the composed
config (a run.name that is not one directory, ``rollout.group_size=1``, ...), a sweep whose jobs would share a run,
and a stage that needs a run that is not there.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from rpt.errors import Refusal


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def check_overrides(overrides: list[str], conf_dir: str | Path) -> None:
    """Refuse a ``group=option`` whose option is not in the config tree, and a ``+a.b.c=value`` that adds a key
    where the config cannot grow one (anywhere but under a free-form dict such as ``rollout.templates``)."""
    from omegaconf import DictConfig, OmegaConf

    from rpt.config import RootConfig

    conf, schema = Path(conf_dir), OmegaConf.structured(RootConfig)
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep:
            continue
        if (conf / key).is_dir():  # a config group
            options = {p.stem for p in (conf / key).glob("*.yaml")}
            if value not in options and "," not in value and value not in ("null", ""):
                raise Refusal(f"{key}={value}: there is no {key} {value!r}{_suggest(value, options)}; "
                              f"the {key} options are {', '.join(sorted(options))}")
            continue
        if not override.startswith("+"):
            continue  # Hydra itself refuses a key the config does not have
        node, path = schema, key.split(".")
        for depth, part in enumerate(path):
            if not isinstance(node, DictConfig) or OmegaConf.get_type(node) is dict:
                break  # a free-form value: any key may be added under it
            if part not in node:
                where = ".".join(path[:depth]) or "the config"
                raise Refusal(f"{override}: {where} has no key {part!r}{_suggest(part, list(node.keys()))}; "
                              f"a '+' key that nothing reads would be ignored")
            node = node[part]


def composition_error(err: Exception) -> Refusal:
    """Hydra's or OmegaConf's error for overrides that do not compose (``rpt.stepz=3``: a key the config lacks;
    ``model.hidden_size=abc``: a value of the wrong type; a syntax error) as one line: its first sentence, the
    first line of its cause, and close matches for a missing key."""
    first = " ".join(str(err).split("\n")[0].split()).rstrip(".")
    cause = err.__cause__ or err.__context__
    said = " ".join(str(cause).strip().split("\n")[0].split()) if cause is not None else ""
    if said and said.rstrip(".") != first:
        first += ": " + said
        key, parent = getattr(cause, "key", None), getattr(cause, "parent_node", None)
        if isinstance(key, str) and parent is not None and hasattr(parent, "keys") and key not in parent:
            first += _suggest(key, [str(k) for k in parent.keys()])
    return Refusal(first)


def preflight(stage: str, overrides: list[str], multirun: bool, conf_dir: str, starts_a_run: tuple[str, ...]) -> None:
    """Every refusal that needs no run directory, before Hydra makes one. Overrides that do not compose are left
    for Hydra to report in its own words."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rpt import config as schema
    from rpt.sweep import check_distinct

    check_overrides(overrides, conf_dir)
    if multirun:
        try:
            check_distinct(overrides, conf_dir)  # also refuses a job whose run.name is not one directory
        except (HydraException, OmegaConfBaseException):  # a misspelled key: Hydra says so, before any submission
            return
        return
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            composed = compose(config_name="config", overrides=[o for o in overrides if not o.startswith("hydra")])
        schema.RunConfig(name=composed.run.name)
    except (HydraException, OmegaConfBaseException):
        return
    check_reward(schema.load(composed))  # the schema's own checks (a recalled run is checked again with its saved
    # overrides)
    run_dir = Path(composed.run.root) / composed.run.name
    aggregate = stage == "report" and composed.report.get("runs")  # a report over other runs makes its own
    if stage not in starts_a_run and not aggregate and not run_dir.is_dir():
        raise Refusal(f"there is no run {str(run_dir)!r} for `rpt {stage}`: check run.name and run.root, or start "
                      f"the run with `rpt pipeline` (or `rpt prep`, `rpt hf_import`)")


def check_reward(cfg) -> None:
    """Import and check ``reward.fn`` / ``reward.next_token_fn`` (once per process) when this call runs a stage
    that scores with it, so a function that does not import or cannot take ``(response_text, item, tokenizer)``
    is refused before any work (``rpt.reward.custom``)."""
    from rpt.reward.custom import load, used_by

    for key, spec in used_by(cfg.reward, cfg.stages if cfg.stage == "pipeline" else [cfg.stage]):
        load(spec, key)


def check_lm_eval(cfg) -> None:
    """When this call runs the ``lm_eval`` stage: every task of ``lm_eval.tasks`` resolves in lm-eval and every local
    data file it reads exists (``rpt.eval.harness_tasks``), before any stage or model loads."""
    if "lm_eval" in (cfg.stages if cfg.stage == "pipeline" else [cfg.stage]):
        from rpt.eval.harness_tasks import resolve_tasks

        resolve_tasks(cfg.lm_eval.tasks, cfg.lm_eval.include_path, cfg.lm_eval.data_files)
