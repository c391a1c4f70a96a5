"""Stage `rlp` (RLP beside RPT in one run, ``experiment=rlp_compare``) end to end at smoke size through the real CLI:
it trains from `rpt`'s start on `rpt`'s positions with RLP's reward (its rows log the information gain, `rpt`'s do
not), `eval` scores its checkpoint beside `rpt`'s and the report pairs them; a run killed with SIGKILL mid-stage
resumes with every metric of every step equal to the uninterrupted run's (the EMA baseline is in the checkpoint);
and a run that would train RLP twice (``algo=rlp`` with stage `rlp`) is refused in one line before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import kill_at_checkpoint, rpt_command, run_command, stage_rows
from tests.test_readme import demo_at_smoke_size, run_line

pytestmark = pytest.mark.e2e

# the README's three-way recipe, run below with one seed at smoke size
README_LINES = ("rpt pipeline --multirun experiment=rlp_compare run.seed=0,1,2 'run.name=rlp_compare_seed${run.seed}'",
                "rpt report run.name=rlp_compare_seeds 'report.runs=[rlp_compare_seed*]'")
SMOKE = [*demo_at_smoke_size(), "rpt.steps=4", "rpt.checkpoint_every=1", "algo.entropy_coef=0.01"]


@pytest.fixture(scope="module")
def three_way(tmp_path_factory) -> Path:
    """The README's recipe, one seed at smoke size, and its aggregate report: ``runs/`` of it."""
    root = tmp_path_factory.mktemp("three_way")
    run_line(README_LINES[0], root, replace={"run.seed": "0"}, append=SMOKE)
    run_line(README_LINES[1], root)
    return root / "runs"


def test_rlp_trains_on_rpts_positions_and_is_compared_with_rpt_and_cnt(three_way):
    run = three_way / "rlp_compare_seed0"
    rlp, rpt = stage_rows(run, "rlp"), stage_rows(run, "rpt")
    assert [r["step"] for r in rlp] == [r["step"] for r in rpt] == [1, 2, 3, 4]
    assert all("rlp_gain_mean" in r for r in rlp) and not any("rlp_gain_mean" in r for r in rpt)
    assert {r["stage"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())} >= {
        "rl_pretrain", "rl_rpt", "rl_rlp", "rl_cnt"}  # the same downstream RL from each
    next_token = json.loads((run / "eval" / "next_token.json").read_text())
    assert {"base", "rpt", "rlp", "cnt"} <= set(next_token["results"])
    assert "| rlp | reasoning_greedy |" in (run / "report" / "report.md").read_text()
    aggregate = (three_way / "rlp_compare_seeds" / "report" / "report.md").read_text()
    for label in ("RPT reasoning first − RLP reasoning first", "RLP reasoning first − base reasoning first",
                  "RPT → RL − RLP → RL", "RLP → RL − CNT → RL"):
        assert f"| {label}" in aggregate, label


def test_a_killed_rlp_stage_started_over_resumes_exactly(three_way, tmp_path):
    """`rpt rlp force=true` on a copy of the finished run (its rlp checkpoints left out, so that the kill waits for
    the new ones), SIGKILLed at its second checkpoint, then the same command again: every metric of every step equals
    the uninterrupted run's (the EMA baseline is in the checkpoint)."""
    ref = three_way / "rlp_compare_seed0"
    copy = tmp_path / "runs" / ref.name
    shutil.copytree(ref, copy, ignore=lambda d, names: ["rlp"] if Path(d).name == "checkpoints" else [])
    forced = rpt_command("rlp", f"run.name={ref.name}", "force=true")  # SIGKILL reaches rpt itself, no shell between
    kill_at_checkpoint(forced, tmp_path, copy / "checkpoints" / "rlp" / "latest", 2)
    assert not (copy / "done" / "rlp.json").exists() and stage_rows(copy, "rlp") != stage_rows(ref, "rlp")
    run_command(forced, cwd=tmp_path)
    assert stage_rows(copy, "rlp") == stage_rows(ref, "rlp")


def test_rlp_twice_is_refused_before_any_work(tmp_path):
    proc = run_command(rpt_command("rlp", "experiment=smoke", "algo=rlp", "run.name=twice"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and not (tmp_path / "runs" / "twice").exists()
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rpt:")]
    assert len(lines) == 1 and "drop algo=rlp" in lines[0], proc.stderr[-2000:]
