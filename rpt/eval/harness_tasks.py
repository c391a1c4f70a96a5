"""Which lm-evaluation-harness tasks ``rpt lm_eval`` runs, resolved and checked before any model loads.

A task is named as lm-eval names it: a task, group or tag of its registry, of the definitions rpt ships
(``rpt/eval/lm_eval_tasks/``: SuperGPQA, which the registry lacks) or of the YAMLs under ``lm_eval.include_path``.
Every name must resolve and every local data file a task reads must exist (``dataset_kwargs.data_files``, or the
file ``lm_eval.data_files`` gives a task for its test split), or the call is refused in one line naming what is
missing, so that an evaluation of many checkpoints never fails after the first export.

lm-eval's registry holds ~14,700 names, and indexing it parses every YAML file (15 s on a 2-core CPU), so the local
directories are indexed first and the registry only when a name is not found there; a name that no registry file
even mentions is refused after a text scan (about 1 s) instead. The index and the resolved list are built once per
process (the CLI's check and the stage share them). ``lm_eval.tasks._yaml_loader`` is lm-eval's own YAML reader
(its ``!function`` tags, its ``include``), private in 0.4.13: the reason the ``eval`` extra pins lm-eval.
"""

from __future__ import annotations

import difflib
import functools
import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpt.errors import Refusal

SHIPPED = Path(__file__).resolve().parent / "lm_eval_tasks"  # rpt's own task definitions, always indexed


@dataclass(frozen=True)
class ResolvedTasks:
    names: tuple[str, ...]  # what was asked for, in order: the report's columns
    specs: tuple  # what lm-eval's simple_evaluate takes: a name, or a task's whole config (a data file replaced)
    manager: Any  # lm_eval.tasks.TaskManager holding them


def lm_eval_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_lm_eval() -> None:
    if lm_eval_version() is None:
        raise Refusal("rpt lm_eval needs lm-evaluation-harness: pip install -e '.[eval]' (`make install` installs it)")


@functools.lru_cache(maxsize=4)
def _manager(paths: tuple[str, ...], registry: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=registry)


@functools.lru_cache(maxsize=1)
def _registry_texts() -> tuple[tuple[str, str], ...]:
    """(path, text) of every YAML file of lm-eval's registry, read as text (no parsing)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    return tuple((str(p), p.read_text(encoding="utf-8", errors="ignore")) for p in sorted(root.rglob("*.yaml"))
                 if "__pycache__" not in p.parts)


def _mentioned_in_registry(name: str) -> bool:
    word = re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])")
    return any(word.search(text) for _, text in _registry_texts())


def _registry_names() -> list[str]:
    """The names the registry's files declare (``task:``/``group:``/``tag:`` lines): for did-you-mean hints."""
    line = re.compile(r"^(?:task|group|tag):\s*['\"]?([\w.-]+)", re.M)
    return sorted({m for _, text in _registry_texts() for m in line.findall(text)})


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _paths(include_path: str | None) -> tuple[str, ...]:
    if include_path is None:
        return (str(SHIPPED),)
    if not Path(include_path).is_dir():
        raise Refusal(f"lm_eval.include_path={include_path} is not a directory: give the directory that holds your "
                      f"task YAMLs")
    return str(SHIPPED), str(Path(include_path).resolve())


def task_manager(tasks: list[str], include_path: str | None):
    """The smallest lm-eval TaskManager that knows every name of ``tasks``: the local directories alone when they
    do, with the registry otherwise; a name neither holds is refused, with the closest known names."""
    paths = _paths(include_path)
    manager = _manager(paths, False)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing and all(_mentioned_in_registry(t) for t in missing):
        manager = _manager(paths, True)
        missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        known = set(manager.all_tasks) | set(_registry_names())
        where = f"lm-eval {lm_eval_version()}'s registry, rpt's tasks ({SHIPPED})" + \
            (f" and lm_eval.include_path={include_path}" if include_path else " and no lm_eval.include_path")
        raise Refusal("lm_eval.tasks: " + "; ".join(f"no task, group or tag {t!r}{_suggest(t, known)}"
                                                      for t in missing) + f" in {where}")
    return manager


def leaf_configs(manager, name: str) -> dict[str, dict]:
    """``{task: config}`` of every task ``name`` stands for (itself, a group's members, a tag's tasks), from
    lm-eval's index (configs with ``include`` resolved, ``!function`` left unresolved)."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index[name]
    if entry.kind == Kind.TAG:
        return {t: c for task in sorted(entry.tags) for t, c in leaf_configs(manager, task).items()}
    if entry.kind == Kind.GROUP:
        out = {}
        for member in entry.cfg.get("task", []):
            if isinstance(member, dict):  # an inline task or subgroup: its own config
                key = member.get("task") or member.get("group")
                out.update(leaf_configs(manager, key) if isinstance(key, str) and key in manager.task_index
                           else {str(key): member})
            else:
                out.update(leaf_configs(manager, member))
        return out
    return {name: entry.cfg or {}}


def _local_files(data_files) -> list[str]:
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _local_files(v)]
    if isinstance(data_files, str | Path):
        return [] if "://" in str(data_files) else [str(data_files)]
    return [f for v in data_files or [] for f in _local_files(v)]


def _exists(path: str) -> bool:
    path = str(Path(path).expanduser())
    return bool(glob.glob(path)) if glob.has_magic(path) else Path(path).exists()


def _file_builder(dataset_path) -> bool:
    """Whether ``datasets`` reads ``dataset_path`` as a file format (json, csv, ...) over local data files; a hub
    dataset's ``data_files`` name files inside its repository instead."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return dataset_path in _PACKAGED_DATASETS_MODULES


def _local_dir(dataset_path) -> bool:
    return isinstance(dataset_path, str) and dataset_path.startswith(("/", "./", "../", "~"))


def _missing_data(task: str, cfg: dict, data_file: str | None) -> str | None:
    """What is missing of ``task``'s local data, in words (None when nothing is): its data files where it reads
    files (``dataset_path: json`` and the like: relative to the working directory; a local directory: relative to
    it), or the local directory itself."""
    path = cfg.get("dataset_path")
    files = [data_file] if data_file else _local_files((cfg.get("dataset_kwargs") or {}).get("data_files"))
    if _local_dir(path):
        files = [str(Path(path).expanduser())] + [str(Path(path).expanduser() / f) for f in files]
    elif not _file_builder(path):
        files = []  # a hub dataset (read from the hub cache offline): nothing local to check
    absent = [f for f in files if not _exists(f)]
    if not absent:
        return None
    source = (cfg.get("metadata") or {}).get("rpt_data") if isinstance(cfg.get("metadata"), dict) else None
    fix = f"the data is {source}" if source else f"set +lm_eval.data_files.{task}=<file> or fix the task's YAML"
    return f"task {task!r} reads {', '.join(absent)}, which does not exist ({fix})"


def _with_data_file(manager, task: str, path: str) -> dict:
    """``task``'s whole config (lm-eval's reader, ``!function`` resolved) with ``path`` as its test split."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[task]
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    split = cfg.get("test_split") or "test"
    cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "data_files": {split: str(Path(path).resolve())}}
    return cfg


def resolve_tasks(tasks: list[str], include_path: str | None, data_files: dict[str, str]) -> ResolvedTasks:
    """Every name resolved and every local data file present, or a Refusal naming what is not."""
    return _resolve(tuple(tasks), include_path, tuple(sorted((data_files or {}).items())))


@functools.lru_cache(maxsize=4)
def _resolve(tasks: tuple[str, ...], include_path: str | None, data_files: tuple[tuple[str, str], ...]):
    require_lm_eval()
    if not tasks:
        raise Refusal("lm_eval.tasks is empty: name the lm-eval tasks to run, e.g. 'lm_eval.tasks=[mmlu_pro]', or "
                      "your own with lm_eval.include_path=<directory of task YAMLs>")
    if len(set(tasks)) < len(tasks):
        raise Refusal(f"lm_eval.tasks names a task twice: {list(tasks)}")
    manager = task_manager(list(tasks), include_path)
    given = dict(data_files)
    from lm_eval.tasks._index import Kind

    for task in given:
        entry = manager.task_index.get(task)
        if task not in tasks or entry.kind not in (Kind.TASK, Kind.PY_TASK):
            raise Refusal(f"lm_eval.data_files.{task}: give a data file to a task of lm_eval.tasks ({list(tasks)}), "
                          f"not to a group or tag or an unlisted task")
        if not _file_builder((entry.cfg or {}).get("dataset_path")):
            raise Refusal(f"lm_eval.data_files.{task}: task {task!r} reads the dataset "
                          f"{(entry.cfg or {}).get('dataset_path')!r}, not local files (a task with dataset_path "
                          f"json, csv, parquet, ... takes one)")
    problems = [p for name in tasks for task, cfg in leaf_configs(manager, name).items()
                if (p := _missing_data(task, cfg, given.get(task)))]
    if problems:
        raise Refusal("lm_eval: " + "; ".join(problems))
    specs = tuple(_with_data_file(manager, t, given[t]) if t in given else t for t in tasks)
    return ResolvedTasks(tasks, specs, manager)
