"""Mistakes that would run are refused before any work, in one line that names the fix (#23): a config group
option or a '+' key that does not exist, a run.name that is not one directory, a group of fewer than two
responses, a stage on a run that does not exist. The CLI prints ``rpt: <message>``, exits 2, writes nothing and
shows no traceback (``run.log_level=DEBUG`` keeps it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rpt.cli import CONF_DIR, STARTS_A_RUN
from rpt.refusal import preflight


@pytest.mark.parametrize("stage,overrides,message", [
    ("pipeline", ["experiment=smok"], "no experiment 'smok' (did you mean smoke?)"),
    ("pipeline", ["model=tny"], "no model 'tny' (did you mean tiny?)"),
    ("pretrain", ["+pretrain.stpes=3"], "pretrain has no key 'stpes' (did you mean steps?)"),
    ("pipeline", ["+rollout.tempalte=v0"], "rollout has no key 'tempalte' (did you mean template"),
    ("pipeline", ["run.name=.."], "run.name must be one directory name"),
    ("pipeline", ["run.name=a/b"], "got 'a/b'"),
    ("pipeline", ["run.name="], "got ''"),
    ("pipeline", ["run.name=my run"], "got 'my run'"),
    ("pipeline", ["rollout.group_size=1"], "rollout.group_size must be >= 2, got 1"),
    ("pipeline", ["rollout.group_size=-4"], "rollout.group_size must be >= 2, got -4"),
    ("hf_export", ["run.name=nosuchrun"], "there is no run 'runs/nosuchrun' for `rpt hf_export`"),
])
def test_mistakes_are_refused_before_any_work(stage, overrides, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        preflight(stage, [f"stage={stage}", *overrides], False, CONF_DIR, STARTS_A_RUN)
    assert message in str(err.value)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides", [
    ["experiment=smoke", "+rollout.templates.mine={context}<think>"],  # a free-form dict may grow keys
    ["experiment=smoke", "run.name=seed=1,lr=2"],
    ["algo=grpo,kl_cov"],  # a sweep's values are checked per job
])
@pytest.mark.parametrize("stage", ["pipeline", "report"])
def test_what_is_right_passes(stage, overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if stage == "report":  # an aggregate report over runs starts its own run directory
        overrides = [*overrides, "run.name=agg", "report.runs=[a,b]"]
    preflight(stage, [f"stage={stage}", *overrides], False, CONF_DIR, STARTS_A_RUN)


def test_the_cli_prints_one_line_exits_2_and_writes_nothing(tmp_path):
    def rpt(*args):
        return subprocess.run([sys.executable, "-m", "rpt.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    for args in (["pipeline", "run.name=.."], ["hf_export", "run.name=nosuchrun"], ["rl", "rollout.group_size=1"]):
        proc = rpt(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("rpt: ") and "Traceback" not in proc.stderr
        assert not list(tmp_path.iterdir()), args
    debug = rpt("pipeline", "run.name=..", "run.log_level=DEBUG")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "run.name must be" in debug.stderr
