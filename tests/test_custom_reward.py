"""Rewards users bring (reward.fn, reward.next_token_fn; rpt/reward/custom.py): the function is found by module or
by file, checked and imported once, refused in one line when it does not import, is not a function of
(response_text, item, tokenizer) or returns something else than a number or a dict with a score; a task scored
through it logs its extra numbers; and a user's own question/answer dataset with a reward function in a file outside
the package trains the `rl` stage end to end through the real CLI, without touching rpt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rpt import config as schema
from rpt.errors import Refusal
from rpt.reward import custom
from rpt.tasks.downstream import build_downstream_task
from tests.helpers import compose_config, rpt_command

schema.register()

USER_MODULE = '''
import os

# one line per import: the test counts the processes that imported this module and how often
with open(os.environ["REWARD_IMPORTS"], "a") as log:
    log.write(f"{os.getpid()}\\n")


def score(response_text, item, tokenizer):
    """The share of digits in the response, plus what the test checks."""
    digits = sum(ch.isdigit() for ch in response_text)
    return {"score": digits / max(len(response_text), 1), "chars": len(response_text),
            "says_answer": float(item["answer"] in response_text), "vocab": tokenizer.vocab_size}


def plain(response_text, item, tokenizer):
    return 1.0 if item["answer"] in response_text else 0.0


def two_args(response_text, item):
    return 0.0


def says_yes(response_text, item, tokenizer):
    return "yes"


def no_score(response_text, item, tokenizer):
    return {"reward": 1.0}


def text_metric(response_text, item, tokenizer):
    return {"score": 1.0, "note": "fine"}


NOT_A_FUNCTION = 3
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """``my_rewards.py`` in a directory of the user's (put on sys.path and PYTHONPATH), outside the package."""
    home = tmp_path / "user_code"
    home.mkdir()
    (home / "my_rewards.py").write_text(USER_MODULE)
    monkeypatch.setenv("REWARD_IMPORTS", str(tmp_path / "imports.log"))
    monkeypatch.syspath_prepend(str(home))
    sys.modules.pop("my_rewards", None)
    custom.load.cache_clear()
    yield home / "my_rewards.py"
    sys.modules.pop("my_rewards", None)
    custom.load.cache_clear()


def _qa_file(path: Path, n: int = 12) -> Path:
    path.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}) + "\n"
                            for i in range(n)))
    return path


def test_a_function_by_module_and_by_file_is_the_same_and_imported_once(user_module, tmp_path):
    by_module = custom.load("my_rewards:plain")
    by_file = custom.load(f"{user_module}:plain")
    assert by_module("it is 4", {"answer": "4"}, None) == 1.0
    assert by_file("no", {"answer": "4"}, None) == 0.0
    assert custom.load("my_rewards:plain") is by_module and custom.load(f"{user_module}:score") is not None
    imports = (tmp_path / "imports.log").read_text().split()
    assert len(imports) == 2  # once as the module my_rewards, once as the file: each cached after


@pytest.mark.parametrize("spec, says", [
    ("no_such_module_xyz:score", "cannot import 'no_such_module_xyz' (is its directory on PYTHONPATH?)"),
    ("/no/such/file.py:score", "there is no file"),
    ("my_rewards:missing", "has no 'missing'"),
    ("my_rewards:NOT_A_FUNCTION", "is a int, not a function"),
    ("my_rewards:two_args", "two_args(response_text, item) cannot be called with (response_text, item, tokenizer)"),
    ("my_rewards", "not of the form <module or file>:<function>"),
])
def test_a_reward_that_cannot_be_used_is_refused_in_one_line(user_module, spec, says):
    with pytest.raises(Refusal) as refused:
        custom.load(spec)
    message = str(refused.value)
    assert says in message and "\n" not in message and message.startswith(f"reward.fn={spec}: ")


def test_what_the_function_returns(user_module):
    assert custom.as_score(1, "s") == (1.0, {})
    assert custom.as_score({"score": 0.25, "n": 3, "ok": True}, "s") == (0.25, {"n": 3.0, "ok": 1.0})
    import numpy as np
    import torch

    assert custom.as_score(np.float32(0.5), "s") == (0.5, {}) and custom.as_score(torch.tensor(1.0), "s") == (1.0, {})
    for value, says in [("yes", "returned 'yes' (str)"), ({"reward": 1.0}, "without 'score'"),
                        ({"score": 1.0, "note": "x"}, "'note': 'x' beside 'score'"), (float("nan"), "NaN"),
                        (None, "returned None")]:
        with pytest.raises(Refusal, match="^reward.fn=s: ") as refused:
            custom.as_score(value, "s")
        assert says in str(refused.value)


def test_a_task_scored_by_the_users_function_keeps_its_extra_numbers(user_module, tmp_path, tokenizer):
    path = _qa_file(tmp_path / "qa.jsonl")
    cfg = compose_config("experiment=smoke", "rl_task.source=dataset", f"rl_task.dataset.path={path}",
                         "rl_task.template='{question} <think>'")
    task = custom.with_reward(build_downstream_task(cfg.rl_task, tokenizer, "train", 0), "my_rewards:score")
    item = {"question": "What is 2 + 2?", "answer": "4"}
    assert task.reward(item, "2 + 2 </think> \\boxed{4}") == pytest.approx(3 / 24)
    assert task.reward(item, "none") == 0.0 and task.is_correct(0.6) and not task.is_correct(0.4)
    taken = custom.take_metrics(task)
    assert taken == {"chars": [24.0, 4.0], "says_answer": [1.0, 0.0], "vocab": [float(tokenizer.vocab_size)] * 2}
    assert custom.take_metrics(task) == {}
    assert custom.reward_metrics(task, taken) == {"reward/chars": 14.0, "reward/says_answer": 0.5,
                                                  "reward/vocab": float(tokenizer.vocab_size)}
    plain = build_downstream_task(cfg.rl_task, tokenizer, "train", 0)
    assert custom.with_reward(plain, None) is plain and custom.reward_metrics(plain, {}) == {}
    for spec, says in [("my_rewards:says_yes", "returned 'yes'"), ("my_rewards:no_score", "without 'score'"),
                       ("my_rewards:text_metric", "'note': 'fine'")]:  # found on the first item, before any model
        with pytest.raises(Refusal, match=says):
            custom.with_reward(build_downstream_task(cfg.rl_task, tokenizer, "train", 0), spec)


LENGTH_CREDIT_MODULE = '''
def length_credit(response_text, item, tokenizer):
    """A reward no prefix match gives: the response's length, capped, and how many target tokens the item stores."""
    return {"score": min(len(response_text), 20) / 20, "target_tokens": float(len(item["target"]))}
'''


NEXT_TOKEN_MODULE = '''
def soft_prefix(response_text, item, tokenizer):
    """Credit for the share of the true continuation's first token that the response's last word spells."""
    target = tokenizer.decode(item["target"][:1]).strip()
    said = response_text.split()[-1] if response_text.split() else ""
    return sum(a == b for a, b in zip(said, target)) / max(len(target), 1)
'''


def test_the_next_token_task_scored_by_the_users_function(tmp_path, tokenizer):
    """reward.next_token_fn replaces the prefix reward (and its format bonus) of RPT's next-token task."""
    from rpt.tasks.next_token import NextTokenTask

    (tmp_path / "nt.py").write_text(NEXT_TOKEN_MODULE)
    ids = tokenizer.encode("12 + 34 = 46")
    item = {"context": ids[:-2], "target": ids[-2:], "entropy": 1.0, "doc": 0}
    target = tokenizer.decode(ids[-2:-1]).strip()
    task = NextTokenTask([item], tokenizer, "{context}", format_reward=0.1)
    custom.with_reward(task, f"{tmp_path / 'nt.py'}:soft_prefix", "reward.next_token_fn")
    assert task.format_reward == 0.0
    assert task.reward(item, f"so {target}") == 1.0 and task.reward(item, "") == 0.0


def test_the_config_refuses_a_malformed_spec_and_a_format_bonus_beside_the_function():
    with pytest.raises(ValueError, match="reward.next_token_fn=nocolon: not of the form"):
        schema.load(compose_config("reward.next_token_fn=nocolon"))
    with pytest.raises(ValueError, match="rollout.format_reward=0"):
        schema.load(compose_config("reward.next_token_fn=m:f", "rollout.format_reward=0.1"))
    assert schema.load(compose_config("reward.fn=m:f", "rollout.format_reward=0.1")).reward.fn == "m:f"
    assert custom.used_by(schema.RewardConfig(fn="a:f", next_token_fn="b:g"), ["rpt"]) == [
        ("reward.next_token_fn", "b:g")]
    assert custom.used_by(schema.RewardConfig(fn="a:f"), ["prep", "pretrain", "report"]) == []
    assert [k for k, _ in custom.used_by(schema.RewardConfig(fn="a:f", next_token_fn="b:g"), ["eval"])] == [
        "reward.fn", "reward.next_token_fn"]


@pytest.mark.parametrize("spec, says", [("no_such_module_xyz:score", "cannot import 'no_such_module_xyz'"),
                                        ("my_rewards:two_args", "two_args(response_text, item) cannot be called")])
def test_the_cli_refuses_a_reward_it_cannot_use_before_making_the_run(tmp_path, spec, says):
    """In one line, exit status 2, nothing written; the user's module is found on PYTHONPATH."""
    (tmp_path / "my_rewards.py").write_text(USER_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "REWARD_IMPORTS": str(tmp_path / "imports.log")}
    proc = subprocess.run(rpt_command("rl", f"run.root={tmp_path}", "run.name=r", f"reward.fn={spec}"), cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rpt: reward.fn={spec}: ") and says in lines[0], lines
    assert not (tmp_path / "r").exists()
    # a stage that does not score leaves the function alone (`prep` here: it is not imported, nothing is refused)
    from rpt.refusal import check_reward

    check_reward(schema.load(compose_config("stage=prep", "reward.fn=no_such_module_xyz:score")))


@pytest.mark.multiprocess
def test_every_rank_logs_the_same_extra_metrics(tokenizer_file):
    """2 gloo ranks whose extra metric names differ take the same collectives and log the same means."""
    from tests.test_dp_collectives import _torchrun

    _torchrun("reward_metrics", tokenizer_file)


@pytest.mark.e2e
def test_a_users_dataset_and_reward_file_train_the_rl_stage(tmp_path):
    """The user's records and reward file live in their own directory; rpt is not edited. `rl` trains on them from
    the run's base with the function named by its file; the logged rewards are the function's, its extra numbers
    are logged as reward/<name>, and the process imported it once."""
    home = tmp_path / "user_code"
    home.mkdir()
    (home / "my_rewards.py").write_text(USER_MODULE)
    data = _qa_file(home / "qa.jsonl", 16)
    env = {**os.environ, "REWARD_IMPORTS": str(tmp_path / "imports.log")}
    root, base = tmp_path / "runs", ["experiment=smoke", f"run.root={tmp_path / 'runs'}", "run.name=mine"]

    def rpt(*args):
        proc = subprocess.run(rpt_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]

    rpt("prep", *base, "data.num_pretrain_docs=100", "data.num_rpt_docs=8")
    rpt("pretrain", *base, "pretrain.steps=1")
    (tmp_path / "imports.log").unlink(missing_ok=True)  # (prep and pretrain never import it anyway)
    rpt("rl", *base, "rl_task.train_on=[pretrain]", "rl_task.source=dataset", f"rl_task.dataset.path={data}",
        "rl_task.template='{question} <think>'", "rl_task.train_size=16", "rl_task.test_size=4", "rl.steps=2",
        "rl.eval_every=2", "rl.eval_size=4", "logging.sample_every=1", "logging.samples=4",
        f"reward.fn={home / 'my_rewards.py'}:score")
    run = root / "mine"
    assert (run / "checkpoints" / "rl_pretrain").is_dir() and json.loads((run / "done" / "rl.json").read_text())
    assert len((tmp_path / "imports.log").read_text().split()) == 1  # one process, one import
    # a user's reward reads the response as it likes: no "no parseable answer" warning for responses with no box
    assert "no parseable answer" not in (run / "done" / "rl.json").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["stage"] == "rl_pretrain" and "reward_mean" in r]
    assert len(rows) == 2 and all({"reward/chars", "reward/says_answer", "reward/vocab"} <= set(r) for r in rows)
    assert len({r["reward/vocab"] for r in rows}) == 1 and rows[0]["reward/vocab"] > 256
    score = _user_score(home, tmp_path)
    samples = [json.loads(line) for path in sorted((run / "rollouts" / "rl_pretrain").glob("step_*.jsonl"))
               for line in path.open()]
    assert samples
    for sample in samples:  # the logged reward is the user's score of the logged response
        expected = score(sample["response"], {"answer": sample["reference"]}, None)
        assert sample["reward"] == pytest.approx(expected)
    # RPT's next-token task scored by the user's function from another file (reward.next_token_fn), same run
    (home / "next_token.py").write_text(LENGTH_CREDIT_MODULE)
    rpt("select", *base)
    rpt("rpt", *base, "rpt.steps=2", "logging.sample_every=1", "logging.samples=4",
        f"reward.next_token_fn={home / 'next_token.py'}:length_credit")
    assert "no parseable answer" not in (run / "done" / "rpt.json").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["stage"] == "rpt" and "reward_mean" in r]
    assert len(rows) == 2 and all(r["reward/target_tokens"] >= 1 for r in rows)
    samples = [json.loads(line) for path in sorted((run / "rollouts" / "rpt").glob("step_*.jsonl"))
               for line in path.open()]
    assert samples and {s["reward"] for s in samples} - {0.0, 1.0}  # the function's, not the prefix reward's
    for sample in samples:
        assert sample["reward"] == pytest.approx(min(len(sample["response"]), 20) / 20)


def _user_score(home: Path, tmp_path: Path):
    """The user's reward, as the share of digits it scores, loaded here from the user's file."""
    os.environ.setdefault("REWARD_IMPORTS", str(tmp_path / "here.log"))
    fn = custom.load(f"{home / 'my_rewards.py'}:score")
    return lambda text, item, tok: fn(text, item, type("T", (), {"vocab_size": 0}))["score"]
