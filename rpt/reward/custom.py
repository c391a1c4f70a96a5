"""Rewards users bring: a function of the user's own, named ``package.module:function`` (importable from
``PYTHONPATH``) or ``/path/to/file.py:function`` (a file anywhere), scores every response instead of the task's
verifier: ``reward.fn`` for the downstream tasks (the `rl` stage's reasoning-gym or question/answer dataset, and
eval's downstream questions), ``reward.next_token_fn`` for RPT's next-token task (the `rpt` stage, its validation,
eval's reasoning-first next-token rows; the direct rows stay the true next token's match). They are verl's
``custom_reward_function`` and slime's ``--custom-rm-path``. Two keys, because a run's finished `rpt` stage fixes
the next-token reward and its `rl` stage the downstream one (``rpt.run_memory.FIXES``): a reward for `rl` can be
brought after `rpt` has run.

The signature::

    def score(response_text: str, item, tokenizer) -> float | dict:

``response_text``: the decoded response (the thinking and the answer; ``task.extract`` is not applied, use
``rpt.reward.answer.extract_answer`` for the last ``\\boxed{}``); ``item``: the task's item (a question/answer
dataset: ``{"question", "answer"}`` with the reference answer as text; reasoning-gym: its entry, ``question``,
``answer``, ``metadata``; the next-token task: a position with ``context`` and ``target`` token ids, ``doc`` and
``entropy``); ``tokenizer``: the run's ``rpt.tokenizer.Tokenizer`` (``decode(ids)``, ``encode(text)``,
``token_bytes(id)``). It returns the reward as a number, or a dict with the reward under ``score`` and any other
numeric values, which are logged per RL step as ``reward/<name>`` (their mean over the step's sampled responses).

The function's score is the whole reward: ``rollout.format_reward`` is not added (a bonus for a readable answer
belongs in the function, and the two together are refused), and a response counts as right (accuracy, pass@k,
Critique-GRPO's gate) when its score is above one half. The function should be a pure function of its arguments:
every rank calls the same function on its own responses, and a resumed run reproduces the uninterrupted one only
if the same response earns the same score.

It is imported once per process (``load``, cached), before any model is built: a spec that does not import, a name
that is not a function, or a function that cannot take ``(response_text, item, tokenizer)`` is refused in one line
(``rpt.errors.Refusal``), and so is a return value that is not a number or such a dict, found when the stage calls
the function on its first item with an empty response, before training starts. A relative file path is taken from
the directory `rpt` runs in (the run remembers the spec as given: an absolute path is safest).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import Any

from rpt.errors import Refusal

SIGNATURE = "(response_text, item, tokenizer) -> float or {'score': float, <name>: number, ...}"
# the stages that score with each key (what they fix in rpt.run_memory.FIXES; rlp logs it beside its own reward)
USES = {"rpt": ("next_token_fn",), "rlp": ("next_token_fn",), "rl": ("fn",), "eval": ("fn", "next_token_fn")}


def used_by(reward_cfg, stages) -> list[tuple[str, str]]:
    """(``reward.<key>``, spec) of every function set in ``reward_cfg`` that one of ``stages`` scores with."""
    keys = dict.fromkeys(key for stage in stages for key in USES.get(stage, ()))
    return [(f"reward.{key}", getattr(reward_cfg, key)) for key in keys if getattr(reward_cfg, key)]


def _refuse(key: str, spec: str, what: str) -> Refusal:
    return Refusal(f"{key}={spec}: {what}; {key} takes package.module:function or /path/to/file.py:function, a "
                   f"function {SIGNATURE}")


def split_spec(spec: str, key: str = "reward.fn") -> tuple[str, str]:
    """(module or file, function name) of a ``reward.fn`` value; refused unless it has both."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise _refuse(key, spec, "not of the form <module or file>:<function>")
    return where, name


def is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _import_file(key: str, spec: str, where: str):
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise _refuse(key, spec, f"there is no file {str(path)!r}")
    name = f"rpt_user_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # what dataclasses and pickling of the module's objects look up
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@functools.cache
def load(spec: str, key: str = "reward.fn") -> Callable[..., Any]:
    """The function ``spec`` (the value of ``key``) names, imported and checked once per process; refused in one
    line when the import fails or the function cannot take ``(response_text, item, tokenizer)``."""
    where, name = split_spec(spec, key)
    try:
        module = _import_file(key, spec, where) if is_file(where) else importlib.import_module(where)
    except Refusal:
        raise
    except Exception as err:  # the user's module: any failure to import it is a mistake in what was asked
        missing = isinstance(err, ModuleNotFoundError) and err.name and (where + ".").startswith(err.name + ".")
        hint = " (is its directory on PYTHONPATH?)" if missing else ""
        raise _refuse(key, spec, f"cannot import {where!r}{hint}: {type(err).__name__}: {err}") from err
    fn = getattr(module, name, None)
    if fn is None:
        raise _refuse(key, spec, f"{where!r} has no {name!r}")
    if not callable(fn) or inspect.isclass(fn):
        raise _refuse(key, spec, f"{name!r} is a {type(fn).__name__}, not a function")
    if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
        raise _refuse(key, spec, f"{name!r} is an async or generator function; it must return the score")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn  # a builtin without a signature: its first call tells
    try:
        signature.bind("", {}, None)
    except TypeError:
        raise _refuse(key, spec, f"{name}{signature} cannot be called with (response_text, item, tokenizer)") from None
    return fn


def as_score(value: Any, spec: str, key: str = "reward.fn") -> tuple[float, dict[str, float]]:
    """The reward and the extra metrics of one return value; anything else is refused naming what came back."""
    if isinstance(value, dict):
        if "score" not in value:
            raise _refuse(key, spec, f"returned a dict without 'score' (keys {sorted(map(str, value))})")
        extras = {}
        for name, number in value.items():
            if name == "score":
                continue
            if not isinstance(name, str) or not _is_number(number):
                raise _refuse(key, spec, f"returned {name!r}: {number!r} beside 'score'; the other values must be "
                                         f"numbers under string names (logged as reward/<name>)")
            extras[name] = float(number)
        return as_score(value["score"], spec, key)[0], extras
    if not _is_number(value):
        raise _refuse(key, spec, f"returned {value!r} ({type(value).__name__})")
    if math.isnan(float(value)):
        raise _refuse(key, spec, "returned NaN")
    return float(value), {}


def _is_number(value: Any) -> bool:
    """A real number: int, float, bool, or a 0-d numpy / torch value of one."""
    if isinstance(value, Real):
        return True
    return getattr(value, "ndim", None) == 0 and hasattr(value, "item") and isinstance(value.item(), Real)


class CustomReward:
    """A task's ``reward(item, response_text)`` through the user's function; the extra metrics of each call are
    kept until ``take_metrics``."""

    def __init__(self, spec: str, key: str, tokenizer):
        self.spec, self.key, self.fn, self.tokenizer = spec, key, load(spec, key), tokenizer
        self.metrics: dict[str, list[float]] = {}

    def __call__(self, item: Any, response_text: str) -> float:
        score, extras = as_score(self.fn(response_text, item, self.tokenizer), self.spec, self.key)
        for name, value in extras.items():
            self.metrics.setdefault(name, []).append(value)
        return score

    def take_metrics(self) -> dict[str, list[float]]:
        """The extra metrics gathered since the last call, by name (and forget them)."""
        taken, self.metrics = self.metrics, {}
        return taken


def with_reward(task, spec: str | None, key: str = "reward.fn"):
    """``task`` scored by the function ``spec`` names (``reward.fn`` or ``reward.next_token_fn``) when it is set: its
    ``reward`` replaced, its format bonus dropped, the function tried on the first item with an empty response (so a
    wrong return type is refused before any model is built); else ``task`` unchanged."""
    if not spec:
        return task
    custom = CustomReward(spec, key, task.tokenizer)
    if len(task):
        custom(task.items[0], "")
        custom.take_metrics()
    task.reward = custom
    task.format_reward = 0.0
    return task


def take_metrics(task, into: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """The extra metrics ``task``'s custom reward gathered since last asked, by name ({} without one), added to
    ``into`` when given."""
    reward = getattr(task, "reward", None)
    taken = reward.take_metrics() if isinstance(reward, CustomReward) else {}
    if into is None:
        return taken
    for name, values in taken.items():
        into.setdefault(name, []).extend(values)
    return into


def reward_metrics(task, gathered: dict[str, list[float]]) -> dict[str, float]:
    """``reward/<name>``: the mean of each extra metric over the whole data-parallel batch, from this rank's
    ``gathered`` values (``take_metrics`` of the step's rewards). Every rank takes the same collectives: the names
    are the union over the ranks (a rank without a value for one still joins its mean). Nothing without a custom
    reward (no collective either: the setting is the same on every rank)."""
    if not isinstance(getattr(task, "reward", None), CustomReward):
        return {}
    import torch

    from rpt.distributed import dp_mean_of, gather_objects

    names = sorted({name for part in gather_objects(sorted(gathered)) for name in part})
    return {f"reward/{name}": dp_mean_of(torch.tensor(gathered.get(name, []), dtype=torch.float64), None)
            for name in names}
