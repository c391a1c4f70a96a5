"""A run remembers itself: every `rpt <stage>` call on a run directory starts from the overrides the run was made
with and applies only the ones given now; a change to what a finished stage was made with is refused.

The run keeps its accumulated command-line overrides (``overrides.yaml``) rather than its resolved config, and each
call re-composes ``defaults + saved overrides + this call's overrides`` with Hydra's compose API. So group choices
(``model=qwen2_5_1_5b``, ``algo=forking``, ``experiment=...``) apply exactly as on the first call, a later override of
a group or of one of its fields composes as it would have then, and ``config.yaml`` stays the resolved result. A key
given again replaces its saved value. Keys that say what to do *now* or where (``TRANSIENT``: the stage, ``stages``,
``force``, the run's name and root, the launch's parallel layout) are never remembered.

What a finished stage was made with: ``FIXES`` names the keys each stage fixes; when a stage finishes, the values of
those keys go to ``stage_config/<stage>.json`` (just before its done marker). A later call whose config differs on
one of them is refused before anything is written, naming the key, both values and the way out (``force=true`` on
that stage, or a new ``run.name``), unless that stage is being forced or goes stale by this call (``rpt.force``).
Keys no stage fixes stay free: ``run.*`` but the seed (device, dtype, log level), ``logging.*``, ``bench.*``, and the
bookkeeping in ``FREE`` (checkpoint and log intervals, performance switches that give the same numbers). A run made
before this existed has no ``overrides.yaml`` and no stage records: it composes from this call alone, unchecked.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, open_dict

from rpt.rundir import RunDir, read_json, write_json, write_text

log = logging.getLogger(__name__)

# overrides that say what to run now, or where, and are never remembered
TRANSIENT = ("stage", "stages", "force", "run.name", "run.root", "run.tensor_parallel", "run.pipeline_parallel")

# what a finished stage fixes: config keys (a section fixes every key under it) its artifacts were made with
FIXES: dict[str, tuple[str, ...]] = {
    "hf_import": ("model", "hf.path"),
    "prep": ("data", "run.seed"),
    "pretrain": ("model", "pretrain", "run.seed"),
    "proxy": ("model", "proxy", "run.seed"),
    "select": ("select",),
    "rpt": ("rpt", "algo", "rollout", "analysis", "reward.next_token_fn", "run.seed"),
    "rlp": ("rpt", "algo", "rollout", "analysis", "reward.next_token_fn", "run.seed"),  # rpt's, with RLP's reward
    "cnt": ("rpt", "cnt", "rollout", "run.seed"),
    "rl": ("rl", "rl_task", "algo", "rollout", "analysis", "reward.fn", "run.seed"),
    "sft": ("sft", "rl.steps", "rl.prompts_per_step", "rollout.group_size", "rl_task.source", "rl_task.task",
            "rl_task.task_kwargs", "rl_task.train_size", "rl_task.operators", "rl_task.template", "rl_task.mix",
            "rl_task.dataset", "run.seed"),
    "eval": ("eval", "reward"),
    "lm_eval": ("lm_eval", "rollout.chat_template", "rollout.answer_format", "rollout.think_close",
                "eval.max_new_tokens"),  # the last four: what lm_eval's unset settings follow
    "report": ("report",),
    "hf_export": ("hf.source", "hf.export_dir", "hf.architecture"),
}
# keys under a fixed section that never change a stage's results (patterns over dotted keys)
FREE = ("model.name", "model.fused_swiglu", "model.recompute", "*.checkpoint_every", "*.log_every",
        "select.batch_size", "rollout.engine", "rollout.max_batch_rows", "rollout.max_kv_tokens",
        "algo.reuse_update_forward", "algo.share_prompt", "*.micro_batch_size", "*.max_tokens_per_micro_batch",
        "*.logits_chunk_tokens", "*.keep_steps")

_PARSER = OverridesParser.create()


def override_key(text: str) -> str:
    """The key an override sets, without its ``+``/``++``/``~`` prefix: ``model``, ``rpt.lr``, ``model@pkg``."""
    parsed = _PARSER.parse_override(text)
    return parsed.key_or_group if parsed.package is None else f"{parsed.key_or_group}@{parsed.package}"


def merge(saved: list[str], given: list[str]) -> list[str]:
    """``saved`` then ``given``; a key given now replaces its saved override (an added key stays an addition)."""
    by_key = {override_key(o): o for o in saved}
    given_keys = {override_key(o) for o in given}
    merged = [o for o in saved if override_key(o) not in given_keys]
    for text in given:
        old = by_key.get(override_key(text))
        new = _PARSER.parse_override(text)
        if (old is not None and "." in new.key_or_group and new.type == OverrideType.CHANGE
                and _PARSER.parse_override(old).type in (OverrideType.ADD, OverrideType.FORCE_ADD)):
            text = "++" + text  # the key exists only because the saved override added it
        merged.append(text)
    return merged


def remembered(overrides: list[str]) -> list[str]:
    return [o for o in overrides if override_key(o) not in TRANSIENT]


def saved_overrides(rd: RunDir) -> list[str]:
    if not rd.overrides.exists():
        return []
    saved = yaml.safe_load(rd.overrides.read_text(encoding="utf-8")) or []
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise ValueError(f"{rd.overrides} must be a list of override strings, got {saved!r}")
    return saved


@dataclass
class Recalled:
    """The config of this call and the overrides the run remembers after it."""

    config: DictConfig
    inherited: list[str]  # saved overrides this call did not replace
    given: list[str]  # this call's overrides
    overrides: list[str]  # what the run remembers from now on


def recall(rd: RunDir, composed: DictConfig, given: list[str], config_name: str = "config") -> Recalled:
    """This call's config: defaults + the run's saved overrides + ``given``, composed by Hydra (inside the app).
    ``composed`` is Hydra's composition of ``given`` alone; it located the run, so its name and root are kept."""
    from hydra import compose

    saved = remembered(saved_overrides(rd))
    given_keys = {override_key(o) for o in given}
    inherited = [o for o in saved if override_key(o) not in given_keys]
    merged = merge(saved, given)
    if inherited:
        try:
            config = compose(config_name=config_name, overrides=merged)
        except Exception as err:
            raise ValueError(f"the run's saved overrides no longer compose with this call's ({err}); they are in "
                             f"{rd.overrides}: start a new run (run.name=...) or fix that file") from err
        with open_dict(config):
            config.run.name, config.run.root = composed.run.name, composed.run.root
        log.info("run %s: inherited from %s: %s", rd.path, rd.overrides.name, " ".join(inherited))
        if given:
            log.info("run %s: given now: %s", rd.path, " ".join(given))
    else:
        config = composed
    return Recalled(config, inherited, list(given), remembered(merged))


def save(rd: RunDir, recalled: Recalled) -> None:
    """Record the run's overrides and its resolved config (rank 0)."""
    from omegaconf import OmegaConf

    write_text(rd.overrides, yaml.safe_dump(recalled.overrides, default_flow_style=False, sort_keys=False))
    write_text(rd.path / "config.yaml", OmegaConf.to_yaml(recalled.config, resolve=True))


# --- what finished stages fixed ------------------------------------------------------------------------------------


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and (tree or not prefix):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def flat_config(cfg) -> dict[str, Any]:
    """Every leaf of the typed config by dotted key, as JSON values (lists are leaves)."""
    return _flat(json.loads(json.dumps(asdict(cfg))))


def fixed_by(stage: str, key: str) -> bool:
    sections = FIXES.get(stage, ())
    return (any(key == s or key.startswith(s + ".") for s in sections)
            and not any(fnmatch.fnmatchcase(key, pattern) for pattern in FREE))


def settings_that_differ(root, names: list[str]) -> dict[str, dict[str, Any]]:
    """The settings some stage fixes (the seed aside) on which the runs ``names`` under ``root`` differ, with each
    run's value: an aggregate's mean ± std means something only over runs made alike. Runs without a
    ``config.yaml`` (made before runs remembered themselves) are left out."""
    configs = {n: _flat(yaml.safe_load(path.read_text())) for n in names
               if (path := RunDir(root, n).path / "config.yaml").exists()}
    differ = {}
    for key in sorted(set().union(*configs.values())) if configs else []:
        if key == "run.seed" or not any(fixed_by(stage, key) for stage in FIXES):
            continue
        values = {n: c.get(key) for n, c in configs.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            differ[key] = values
    return differ


def fixed_values(cfg, stage: str) -> dict[str, Any]:
    return {key: value for key, value in flat_config(cfg).items() if fixed_by(stage, key)}


def record_stage(rd: RunDir, cfg, stage: str) -> None:
    """What ``stage`` was made with (rank 0, before its done marker)."""
    write_json(rd.stage_config(stage), fixed_values(cfg, stage))


@dataclass
class Conflict:
    stage: str
    key: str
    then: Any
    now: Any


def conflicts(cfg, rd: RunDir, unchecked: set[str]) -> list[Conflict]:
    """Keys whose value in ``cfg`` differs from what a finished stage (not in ``unchecked``) was made with."""
    now = flat_config(cfg)
    found = []
    for stage in FIXES:
        if stage in unchecked or not rd.is_done(stage) or not rd.stage_config(stage).exists():
            continue
        for key, then in read_json(rd.stage_config(stage)).items():
            if fixed_by(stage, key) and key in now and now[key] != then:
                found.append(Conflict(stage, key, then, now[key]))
    return found


class RunConflict(ValueError):
    """A call would change what a finished stage of the run was made with."""


def check(cfg, rd: RunDir, unchecked: set[str]) -> None:
    """Refuse (before anything is written) a config that differs from what a finished stage was made with."""
    found = conflicts(cfg, rd, unchecked)
    if not found:
        return
    lines = "\n".join(f"  {c.key}: stage `{c.stage}` finished with {c.then!r}; this call asks for {c.now!r}"
                      for c in found)
    stages = list(dict.fromkeys(c.stage for c in found))
    redo = (f"rpt {stages[0]} force=true ..." if len(stages) == 1
            else f"rpt pipeline 'stages=[{','.join(stages)}]' force=true ...")
    raise RunConflict(
        f"run {rd.path} was made with other values (its overrides are in {rd.overrides}):\n{lines}\n"
        f"To redo {'that stage' if len(stages) == 1 else 'those stages'} with the new values, force "
        f"{'it' if len(stages) == 1 else 'them'} (the outputs move to superseded/, the stages after go stale): "
        f"{redo}; or start a new run: run.name=<new name>; or drop the override to keep the run's value.")
