"""Every stage end to end at smoke size through the real CLI, resuming after a kill, and CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import kill_at_checkpoint, rpt_command, run_command, stage_rows

pytestmark = pytest.mark.e2e

# more RPT steps and a checkpoint every step, so a kill lands mid-stage with a checkpoint to resume from; sample
# rollouts and validation every 4 steps (part of what a resumed run must reproduce); an entropy bonus so that the
# RL stages move the weights (the concentration measurement then has a curve)
RPT_OVERRIDES = ["rpt.steps=8", "rpt.checkpoint_every=1", "logging.sample_every=4", "logging.samples=3",
                 "rpt.eval_every=4", "rpt.eval_size=20", "rpt.keep_steps=[2,4]",
                 "algo.entropy_coef=0.01"]  # the 6-step smoke base earns no reward: the bonus makes every step train
# run by the cnt tests with the run's name and root (tests/test_readme.py)
README_LINES = ("rpt cnt run.name=exp1 cnt.objective=documents cnt.match=flops force=true",)
README_CNT_FLOPS = README_LINES[0]


def rpt_cmd(root: Path, name: str, stage: str = "pipeline", *overrides: str) -> list[str]:
    return rpt_command(stage, "experiment=smoke", f"run.root={root}", f"run.name={name}", *RPT_OVERRIDES, *overrides)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    proc = run_command(rpt_cmd(root, "ref"), cwd=root)
    (root / "ref.log").write_text(proc.stderr)
    return root / "ref"


def test_the_log_shows_rpts_lines_and_one_line_per_warning_kind(reference_run):
    """No progress-bar carriage returns in a log file, none of megatron's INFO internals (DDP bucket dumps, dataset
    index builds), and each third-party warning once, on one line."""
    log = (reference_run.parent / "ref.log").read_text()
    assert "\r" not in log and "Params for bucket" not in log and "megatron.core.datasets" not in log
    warnings = [line for line in log.splitlines() if line.startswith("warning: ")]
    assert warnings and len(warnings) == len(set(warnings)) and "warnings.warn(" not in log
    assert sum("Transformer Engine and Apex are not installed" in w for w in warnings) == 1
    assert len(log.splitlines()) < 150, len(log.splitlines())  # 267 before, for a shorter run


def test_pipeline_writes_every_artifact(reference_run):
    rd = reference_run
    for stage in ["prep", "pretrain", "select", "rpt", "rl", "eval", "report"]:
        assert (rd / "done" / f"{stage}.json").exists(), stage
    for split in ("pretrain", "rpt"):
        manifest = json.loads((rd / "data" / f"{split}.manifest.json").read_text())
        assert manifest["documents"] > 0 and manifest["tokens"] > 0
    from rpt.positions import Positions

    train = Positions(rd / "positions", "train")
    assert len(train) and {"doc_id", "offset", "context", "target", "entropy", "bucket"} <= set(train[0])
    for stage in ["pretrain", "rpt", "rl_pretrain", "rl_rpt"]:
        assert stage_rows(rd, stage), stage
    rpt_rows = stage_rows(rd, "rpt")
    assert len(rpt_rows) == 8 and {"reward_mean", "entropy", "clip_frac_low", "clip_frac_high",
                                    "response_length", "train_rollout_gap", "all_equal_share"} <= set(rpt_rows[0])
    assert rpt_rows[0]["kl_to_old"] == 0.0  # one update per rollout: exactly on-policy
    # the sampler-trainer agreement gate (NeMo-RL's bound) on the lean decoder, every step, and no warning
    assert all(1.0 <= r["token_mult_prob_error"] < 1.05 for r in rpt_rows)
    assert json.loads((rd / "done" / "rpt.json").read_text())["mismatch_warning"] is None
    for row in rpt_rows:
        assert 0.0 <= row["truncated_share"] <= 1.0 and 0.0 <= row["no_answer_share"] <= 1.0
        assert row["reward_std"] >= 0.0
    raw = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_memory_gb"] > 0.0 for r in raw if r["stage"] == "rpt")
    validated = [r for r in rpt_rows if "val/accuracy" in r]
    assert [r["step"] for r in validated] == [4, 8]
    for r in validated:
        assert r["val/n"] == 20 and r["val/n_easy"] >= r["val/n_medium"] >= r["val/n_hard"]
        assert 0.0 <= r["val/accuracy"] <= 1.0
    samples = sorted((rd / "rollouts" / "rpt").glob("step_*.jsonl"))
    assert [p.name for p in samples] == ["step_000004.jsonl", "step_000008.jsonl"]
    rows = [json.loads(line) for line in samples[-1].read_text().splitlines()]
    assert len(rows) == 3 and all(r["step"] == 8 for r in rows)
    for r in rows:
        assert set(r) == {"step", "context", "response", "answer", "reference", "reward", "truncated"}
        assert r["context"].endswith("<think>") and r["reference"] and isinstance(r["truncated"], bool)
    assert all(r["rollout_tokens"] > 0 for r in rpt_rows)  # the compute axis of the scaling fit
    report = (rd / "report" / "report.md").read_text()
    assert "| base | direct |" in report and "| rpt | reasoning_greedy |" in report
    patterns = json.loads((rd / "eval" / "next_token.json").read_text())["patterns"]
    assert set(patterns) >= {"base", "rpt"} and "Reasoning patterns of the greedy" in report
    assert all(abs(sum(v for k, v in p.items() if k != "direct") + p["direct"]) >= 0.99 for p in patterns.values())
    assert "Scaling with RPT compute" in report  # two validations: fitted or not, the points are reported
    assert "| rl_rpt |" in report and "| rl_pretrain |" in report and "Entropy law" in report
    for png in ["rpt_reward.png", "rpt_entropy.png", "rl_rpt_reward.png", "rl_pretrain_entropy.png",
                "entropy_hist.png", "next_token_accuracy.png"]:
        assert (rd / "report" / png).read_bytes()[:4] == b"\x89PNG", png
    assert (rd / "config.yaml").exists()
    concentration = json.loads((rd / "eval" / "concentration.json").read_text())
    assert {"rpt", "rl_pretrain", "rl_rpt"} <= set(concentration)
    moved = concentration["rpt"]
    assert moved["before"] == "pretrain" and moved["tokens"] > 0 and "## Where RL's effect lands" in report
    if sum(r["optimizer_steps"] for r in rpt_rows) > 0:  # the stage moved the policy: a curve from (0,0) to (1,1)
        assert moved["mean_kl"] > 0 and moved["curve"][0] == [0, 0] and moved["curve"][-1] == [1, 1]
        assert (rd / "report" / "concentration.png").read_bytes()[:4] == b"\x89PNG"
    else:  # no optimizer step (every group's rewards were equal): no change, so no shares to draw
        assert moved["mean_kl"] == 0 and moved["top_share"] is None and moved["curve"] == []


def test_eval_scores_the_test_split_and_keeps_every_positions_score(reference_run):
    """`eval` reads the test split whole (eval.max_positions aside), never validation; every mode's per-position
    scores are aligned with the items and average to the bucket accuracies; the corpus-token direct row and the
    likelihood rows are there, and the report shows the held-out overlap."""
    import numpy as np

    from rpt.positions import Positions

    rd = reference_run
    nt = json.loads((rd / "eval" / "next_token.json").read_text())
    test, validation = Positions(rd / "positions", "test"), Positions(rd / "positions", "validation")
    assert nt["split"] == "test" and nt["positions"] == min(12, len(test)) == len(nt["items"]["doc"])
    test_docs = {int(d) for d in test.records["doc"]}
    assert set(nt["items"]["doc"]) <= test_docs and not test_docs & {int(d) for d in validation.records["doc"]}
    entropy = np.array(nt["items"]["entropy"])
    for label in ("base", "rpt"):
        assert {"direct", "direct_corpus", "reasoning_greedy"} <= set(nt["scores"][label])
        for mode, scores in nt["scores"][label].items():
            for bucket, thr in zip(("easy", "medium", "hard"), nt["thresholds"], strict=True):
                chosen = np.array(scores)[entropy > thr]
                cell = nt["results"][label][mode][bucket]
                assert cell["n"] == len(chosen)
                assert cell["accuracy"] == (pytest.approx(chosen.mean()) if len(chosen) else None)
        assert nt["likelihood"][label]["easy"]["mean_logp"] < 0
    report = (rd / "report" / "report.md").read_text()
    assert "## Held-out data" in report and "| base | direct_corpus |" in report
    # the kept checkpoints survive rotation and are scored on the same test positions, with the final one
    kept = sorted(p.name for p in (rd / "checkpoints" / "rpt").glob("step_*"))
    assert kept == ["step_000002", "step_000004", "step_000007", "step_000008"]
    scaling = json.loads((rd / "eval" / "scaling.json").read_text())
    assert scaling["steps"] == [2, 4, 8] and scaling["positions"] == nt["positions"]
    rows = stage_rows(rd, "rpt")
    assert scaling["compute_tokens"] == [sum(r["rollout_tokens"] for r in rows if r["step"] <= s) for s in (2, 4, 8)]
    final = nt["results"]["rpt"]["reasoning_greedy"]
    assert [scaling["buckets"][b]["accuracy"][-1] for b in ("easy", "medium", "hard")] == \
        [final[b]["accuracy"] for b in ("easy", "medium", "hard")]
    assert "Scaling with RPT compute on the whole test split" in report
    assert json.loads((rd / "data" / "contamination.json").read_text())["splits"]["test"]["heldout_documents"] > 0


def test_rerun_skips_finished_stages(reference_run):
    markers = {p.name: p.stat().st_mtime_ns for p in (reference_run / "done").iterdir()}
    proc = run_command(rpt_cmd(reference_run.parent, "ref"), cwd=reference_run.parent)
    assert proc.stderr.count("already finished") + proc.stdout.count("already finished") == 7
    assert markers == {p.name: p.stat().st_mtime_ns for p in (reference_run / "done").iterdir()}


def test_killed_pipeline_resumes_and_matches_uninterrupted_run(reference_run, tmp_path):
    kill_at_checkpoint(rpt_cmd(tmp_path, "killed"), tmp_path, tmp_path / "killed" / "checkpoints" / "rpt" / "latest", 2)
    marker = f"run.root={tmp_path} run.name=killed"  # helpers it forked (the checkpoint writer's queue) die with it
    deadline = time.time() + 10
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _processes_with(marker), "a process of the killed run outlived it"
    rd = tmp_path / "killed"
    assert not (rd / "done" / "rpt.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in (rd / "done").iterdir()}
    assert set(finished) == {"prep.json", "pretrain.json", "select.json"}
    run_command(rpt_cmd(tmp_path, "killed"), cwd=tmp_path)
    for name, mtime in finished.items():
        assert (rd / "done" / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    # every metric of every later step equals the uninterrupted run's (timings aside)
    assert stage_rows(rd, "rpt") == stage_rows(reference_run, "rpt")
    assert stage_rows(rd, "rl_rpt") == stage_rows(reference_run, "rl_rpt")


def _processes_with(marker: str) -> list[int]:
    """Live processes (Linux /proc; zombies have no command line) whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and marker in cmdline:
            found.append(int(entry.name))
    return found


def test_misspelled_override_fails_naming_the_key(tmp_path):
    proc = subprocess.run(rpt_cmd(tmp_path, "typo", "pretrain", "pretrain.stpes=3"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "stpes" in proc.stderr
    assert not (tmp_path / "typo" / "done").exists()


def test_unknown_stage_is_rejected(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rpt.cli", "pretrian"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr


def test_cnt_baseline_trains_on_the_selected_positions_and_is_evaluated(reference_run, tmp_path):
    import math
    import shutil

    run = tmp_path / "cnt"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("wandb"))
    # cnt takes rpt's budget (same positions, same steps); the run remembers rpt.steps=8 from its rpt stage
    run_command(rpt_cmd(tmp_path, "cnt", "cnt"), cwd=tmp_path)
    rows = stage_rows(run, "cnt")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert (run / "checkpoints" / "cnt" / "latest").exists()
    run_command(rpt_cmd(tmp_path, "cnt", "eval", "force=true"), cwd=tmp_path)
    assert "cnt" in json.loads((run / "eval" / "next_token.json").read_text())["results"]
    assert "cnt" in json.loads((run / "eval" / "downstream.json").read_text())["results"]


def test_cnt_on_the_training_documents_at_rpts_flops(reference_run, tmp_path):
    """cnt.objective=documents trains on the RPT-train documents only (never a validation or test document), and
    cnt.match=flops takes as many steps as RPT's training FLOPs need: 8 per rollout token (sample 2, update 6,
    the old-policy forward reused) against 6 per trained token, rounded up to whole steps."""
    import math
    import shutil

    import numpy as np

    run = tmp_path / "cnt_flops"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("wandb"))
    words = [w for w in README_CNT_FLOPS.split()[2:] if not w.startswith("run.name=")]
    run_command(rpt_cmd(tmp_path, "cnt_flops", "cnt", *words, "cnt.micro_batch_size=2"), cwd=tmp_path)
    rollout_tokens = sum(r["rollout_tokens"] for r in stage_rows(run, "rpt"))
    summary = json.loads((run / "done" / "cnt.json").read_text())
    tokens_per_step = 2 * 64  # cnt.micro_batch_size x the smoke data.seq_length
    assert summary["steps"] == math.ceil(rollout_tokens * 8 / 6 / tokens_per_step) > 8
    assert summary["rpt_flops_per_param"] == 8 * rollout_tokens
    assert 0 <= summary["cnt_flops_per_param"] - 8 * rollout_tokens < 6 * tokens_per_step
    assert [r["step"] for r in stage_rows(run, "cnt")] == list(range(1, summary["steps"] + 1))
    rpt_ids = json.loads((run / "data" / "rpt.docs.json").read_text())
    splits = np.load(run / "data" / "rpt_doc_splits.npy")
    assert json.loads((run / "data" / "rpt_train.docs.json").read_text()) == \
        [d for d, s in zip(rpt_ids, splits, strict=True) if s == 0]


def test_eval_without_sampled_next_token_rows(reference_run, tmp_path):
    """eval.next_token_samples=0 keeps the greedy and direct rows and drops reasoning_avg@k (the smoke's 2)."""
    import shutil

    run = tmp_path / "greedy_only"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("wandb"))
    run_command(rpt_cmd(tmp_path, "greedy_only", "eval", "force=true", "eval.next_token_samples=0"), cwd=tmp_path)
    before = json.loads((reference_run / "eval" / "next_token.json").read_text())["results"]["rpt"]
    after = json.loads((run / "eval" / "next_token.json").read_text())["results"]["rpt"]
    assert set(before) - set(after) == {"reasoning_avg@2"} and after["reasoning_greedy"] == before["reasoning_greedy"]


def test_rlp_trains_the_rpt_stage_and_its_ema_baseline_survives_a_restart(reference_run, tmp_path):
    """`rpt rpt algo=rlp` on the smoke run: finite information-gain rewards every step, the EMA baseline in every
    checkpoint, and a restart from the step-1 checkpoint (as if killed after it; a new process) reproduces step 2's
    row exactly, its EMA-dependent values included (tests/test_rlp.py has the formula and in-process tests)."""
    import math
    import shutil

    import torch

    run = tmp_path / "rlp"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("wandb"))
    words = ("rpt", "force=true", "algo=rlp", "rpt.steps=2", "algo.rlp.ema_rate=0.5", "rpt.eval_every=0")
    run_command(rpt_cmd(tmp_path, "rlp", *words), cwd=tmp_path)
    rows = stage_rows(run, "rpt")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[k]) for r in rows for k in ("rlp_gain_mean", "rlp_logp_ema", "loss"))
    step1 = run / "checkpoints" / "rpt" / "step_000001"
    assert torch.load(step1 / "state.pt", weights_only=True)["extra_models"] == ["rlp_ema"]
    (run / "checkpoints" / "rpt" / "latest").write_text("step_000001")
    (run / "done" / "rpt.json").unlink()
    run_command(rpt_cmd(tmp_path, "rlp", "rpt", *words[2:]), cwd=tmp_path)
    assert stage_rows(run, "rpt") == rows


def test_resumed_pretrain_keeps_every_metrics_row(tmp_path):
    """A pretrain resumed from the step-3 checkpoint logs steps 4-6 again and keeps rows 1-3: the same rows, with
    the same values, as the uninterrupted run (the step-3 row used to be dropped)."""
    overrides = ["stages=[prep,pretrain]", "pretrain.log_every=1", "pretrain.checkpoint_every=3"]
    run_command(rpt_cmd(tmp_path, "pre", "pipeline", *overrides), cwd=tmp_path)
    rd = tmp_path / "pre"
    full = stage_rows(rd, "pretrain")
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5, 6]
    (rd / "checkpoints" / "pretrain" / "latest").write_text("step_000003")  # as if killed after step 3
    (rd / "done" / "pretrain.json").unlink()
    run_command(rpt_cmd(tmp_path, "pre", "pretrain", *overrides[1:]), cwd=tmp_path)
    assert stage_rows(rd, "pretrain") == full


def test_multirun_flag_may_come_first_and_each_point_gets_its_run(tmp_path):
    """`rpt <stage> --multirun a=1,2 ...` (the README's sweep form): the stage override is placed among the user's
    overrides, and a run name that interpolates the swept value gives every point its own run directory."""
    cmd = [sys.executable, "-m", "rpt.cli", "prep", "--multirun", "experiment=smoke", f"run.root={tmp_path}",
           "run.name=p${run.seed}", "run.seed=1,2"]
    run_command(cmd, cwd=tmp_path)
    assert (tmp_path / "p1" / "done" / "prep.json").exists() and (tmp_path / "p2" / "done" / "prep.json").exists()
