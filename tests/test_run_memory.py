"""A run remembers itself (rpt/run_memory.py), `force=true` starts stages over (rpt/force.py), and a sweep gives
every job its own run directory (rpt/sweep.py): the rules on real configs and files, then the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rpt import config as schema
from rpt import force, run_memory
from rpt.cli import CONF_DIR, EXTRA_STAGES, STAGES
from rpt.rundir import RunDir, write_json, write_text
from rpt.sweep import SharedRunDir, check_distinct, job_run_dirs
from tests.helpers import rpt_command, run_command

schema.register()


# --- overrides: merged, remembered, re-composed -------------------------------------------------------------------


def test_a_key_given_again_replaces_its_saved_override_and_transient_keys_are_forgotten():
    saved = ["experiment=smoke", "algo=forking", "rpt.lr=1e-5", "+rl_task.mix.chain_sum={weight:2}"]
    given = ["stage=rl", "run.name=x", "force=true", "algo=gppo", "rl_task.mix.chain_sum={weight:3}", "rl.steps=4"]
    merged = run_memory.merge(saved, given)
    assert merged == ["experiment=smoke", "rpt.lr=1e-5", "stage=rl", "run.name=x", "force=true", "algo=gppo",
                      "++rl_task.mix.chain_sum={weight:3}", "rl.steps=4"]
    assert run_memory.remembered(merged + ["run.tensor_parallel=2", "stages=[prep]"]) == [
        "experiment=smoke", "rpt.lr=1e-5", "algo=gppo", "++rl_task.mix.chain_sum={weight:3}", "rl.steps=4"]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_recall_recomposes_saved_group_choices_with_the_new_overrides(tmp_path):
    rd = RunDir(tmp_path, "r")
    write_text(rd.overrides, "- experiment=smoke\n- algo=forking\n- model.hidden_size=48\n")
    given = ["stage=select", f"run.root={tmp_path}", "run.name=r", "rpt.lr=1e-5", "model.num_layers=3"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        recalled = run_memory.recall(rd, compose(config_name="config", overrides=given), given)
    cfg = schema.load(recalled.config)
    assert cfg.model.name == "smoke" and cfg.model.hidden_size == 48 and cfg.model.num_layers == 3
    assert cfg.algo.forking_rho == 0.2 and cfg.data.num_pretrain_docs == 300  # the groups' own values
    assert cfg.rpt.lr == 1e-5 and cfg.run.name == "r" and cfg.stage == "select"
    assert recalled.inherited == ["experiment=smoke", "algo=forking", "model.hidden_size=48"]
    assert recalled.overrides == ["experiment=smoke", "algo=forking", "model.hidden_size=48", "rpt.lr=1e-5",
                                  "model.num_layers=3"]


def test_saved_overrides_that_no_longer_compose_name_the_file(tmp_path):
    rd = RunDir(tmp_path, "r")
    write_text(rd.overrides, "- pretrain.stpes=3\n")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = compose(config_name="config", overrides=["run.name=r"])
        with pytest.raises(ValueError, match="overrides.yaml"):
            run_memory.recall(rd, composed, ["run.name=r"])


# --- what a finished stage fixed ------------------------------------------------------------------------------------


def test_every_fixed_key_is_a_config_key_and_every_stage_has_a_row():
    keys = run_memory.flat_config(schema.RootConfig())
    for stage, sections in run_memory.FIXES.items():
        for section in sections:
            assert any(k == section or k.startswith(section + ".") for k in keys), (stage, section)
    assert set(run_memory.FIXES) == set(STAGES + EXTRA_STAGES) == set(force.INPUTS)


def test_fixed_values_leave_free_keys_out():
    fixed = run_memory.fixed_values(schema.RootConfig(), "pretrain")
    assert fixed["model.hidden_size"] == 128 and fixed["pretrain.lr"] == 3e-3 and fixed["run.seed"] == 1234
    assert "model.fused_swiglu" not in fixed and "pretrain.checkpoint_every" not in fixed
    assert "run.device" not in fixed and "select.top_k" not in fixed
    assert not any(k.startswith("rl_task.train_on") for k in run_memory.fixed_values(schema.RootConfig(), "sft"))
    rpt_fixed = run_memory.fixed_values(schema.RootConfig(), "rpt")
    assert rpt_fixed["rpt.lr"] == schema.RootConfig().rpt.lr and "algo.policy_loss" in rpt_fixed
    # memory budgets give the same numbers: a run may change them between calls
    assert not {"rpt.micro_batch_size", "rpt.max_tokens_per_micro_batch", "rpt.logits_chunk_tokens"} & set(rpt_fixed)


def _finished(rd: RunDir, cfg, *stages: str) -> None:
    for stage in stages:
        run_memory.record_stage(rd, cfg, stage)
        rd.mark_done(stage, {})


def test_a_change_to_a_finished_stage_is_refused_naming_key_values_and_the_way_out(tmp_path):
    rd = RunDir(tmp_path, "r")
    _finished(rd, schema.load(_compose(["experiment=smoke"])), "prep", "pretrain")
    changed = schema.load(_compose(["experiment=smoke", "model.hidden_size=64", "rpt.lr=1e-5",
                                    "model.fused_swiglu=true"]))
    with pytest.raises(run_memory.RunConflict) as err:
        run_memory.check(changed, rd, unchecked=set())
    text = str(err.value)
    assert "model.hidden_size: stage `pretrain` finished with 32; this call asks for 64" in text
    assert "rpt pretrain force=true" in text and "run.name=" in text
    assert "fused_swiglu" not in text and "rpt.lr" not in text  # free, and owned by a stage that has not run
    run_memory.check(changed, rd, unchecked={"pretrain"})  # pretrain forced: allowed
    rd.done_marker("pretrain").unlink()
    run_memory.check(changed, rd, unchecked=set())  # pretrain unfinished: allowed


def test_conflicts_with_several_stages_point_to_one_forced_pipeline(tmp_path):
    rd = RunDir(tmp_path, "r")
    _finished(rd, schema.RootConfig(), "rpt", "cnt")
    with pytest.raises(run_memory.RunConflict, match=r"rpt pipeline 'stages=\[rpt,cnt\]' force=true"):
        run_memory.check(schema.load(_compose(["rpt.steps=3"])), rd, unchecked=set())


# --- force: outputs move aside, consumers go stale ----------------------------------------------------------------


def test_stale_stages_are_the_consumers_only():
    assert force.stale_after({"pretrain"}) == {"select", "rpt", "rlp", "cnt", "rl", "sft", "eval", "report",
                                               "hf_export", "lm_eval"}
    # RLP beside RPT (experiment=rlp_compare): neither reads the other, cnt is matched to rpt alone, rl reads rlp
    three_way = schema.load(_compose(["experiment=rlp_compare"]))
    assert force.stale_after({"rlp"}, three_way) == {"rl", "eval", "report", "lm_eval"}
    assert "rlp" not in force.stale_after({"rpt"}, three_way) and "rlp" not in force.stale_after({"cnt"}, three_way)
    assert force.stale_after({"cnt"}) >= {"rl", "sft", "eval", "report", "hf_export"}
    assert force.stale_after({"eval"}) == {"report"} and force.stale_after({"report"}) == set()
    assert "prep" in force.stale_after({"hf_import"}) and "prep" not in force.stale_after({"select"})


def test_staleness_follows_the_checkpoints_each_stage_starts_from_in_the_runs_config():
    """Without a config every possible source counts (an SFT could have started from rpt); with one, only the
    checkpoints a stage starts from: an SFT from the import does not go stale with rpt, an rpt from the SFT does go
    stale with it, and cnt (matched to rpt) goes with rpt."""
    from_hf = schema.load(_compose(["sft.init_from=hf", "rpt.init_from=hf", "rl_task.train_on=[hf]",
                                    "hf.source=sft"]))
    assert force.stale_after({"rpt"}, from_hf) == {"cnt", "eval", "report", "lm_eval"}
    assert force.stale_after({"sft"}, from_hf) == {"eval", "report", "hf_export", "lm_eval"}
    from_sft = schema.load(_compose(["sft.init_from=hf", "rpt.init_from=sft"]))
    assert {"rpt", "cnt", "rl"} <= force.stale_after({"sft"}, from_sft) and "sft" not in force.stale_after(
        {"rpt"}, from_sft)
    assert "sft" in force.stale_after({"rpt"})  # the static graph: every source a stage may start from


def test_forcing_rpt_after_an_sft_from_the_import_keeps_the_sft_and_redoes_cnt(tmp_path):
    """The reported sequence: `rpt sft sft.init_from=hf`, cnt finished, then `rpt rpt rpt.init_from=sft
    rpt.steps=.. force=true`: allowed (cnt, matched to rpt, goes stale with it instead of refusing the change), and the
    sft checkpoint rpt starts from stays where it is."""
    rd = _fake_run(tmp_path)
    write_text(rd.checkpoints("sft") / "latest", "step_000004")
    before = schema.load(_compose(["sft.init_from=hf", "rpt.init_from=hf"]))
    _finished(rd, before, "sft", "rpt", "cnt")
    now = schema.load(_compose(["sft.init_from=hf", "rpt.init_from=sft", "rpt.steps=7", "rpt.lr=1e-5"]))
    with pytest.raises(run_memory.RunConflict):
        run_memory.check(now, rd, unchecked=set())  # unforced: refused
    forced = {"rpt"}
    run_memory.check(now, rd, unchecked=forced | force.stale_after(forced, now))
    force.start_over(rd, forced, ["stage=rpt", "force=true"], now)
    assert (rd.checkpoints("sft") / "latest").exists() and rd.is_done("sft")
    assert not rd.is_done("rpt") and not rd.is_done("cnt") and not (rd.checkpoints("cnt") / "latest").exists()


def _fake_run(tmp_path) -> RunDir:
    """A run's files as the stages lay them out (written here: the moves are what is tested)."""
    rd = RunDir(tmp_path, "r")
    for rel in ["data/pretrain.bin", "tokenizer/tokenizer.model", "checkpoints/pretrain/step_000006/state.pt",
                "positions/entropy_shards/shard_00000.npz", "positions/train.npy", "checkpoints/rpt/latest",
                "rollouts/rpt/step_000002.jsonl", "checkpoints/rl_rpt/latest", "checkpoints/cnt/latest",
                "eval/next_token.json", "report/report.md", "report/entropy_hist.png"]:
        write_text(rd.path / rel, rel)
    for stage in ["prep", "pretrain", "select", "rpt", "cnt", "rl", "eval", "report"]:
        write_json(rd.done_marker(stage), {"stage": stage})
        write_json(rd.stage_config(stage), {})
    rows = [{"stage": s, "step": 1} for s in ["pretrain", "rpt", "rl_rpt", "cnt", "rl_pretrain", "pretrain"]]
    write_text(rd.metrics, "".join(json.dumps(r) + "\n" for r in rows))
    return rd


def test_forcing_select_moves_its_shards_and_its_consumers_aside(tmp_path):
    rd = _fake_run(tmp_path)
    force.start_over(rd, {"select"}, ["stage=select", "force=true"])
    (aside,) = (rd.path / "superseded").iterdir()
    for rel in ["positions/entropy_shards/shard_00000.npz", "checkpoints/rpt/latest", "rollouts/rpt/step_000002.jsonl",
                "checkpoints/rl_rpt/latest", "checkpoints/cnt/latest", "eval/next_token.json", "done/select.json",
                "done/rpt.json", "done/eval.json", "done/report.json", "stage_config/rpt.json"]:
        assert (aside / rel).exists() and not (rd.path / rel).exists(), rel
    for rel in ["data/pretrain.bin", "tokenizer/tokenizer.model", "checkpoints/pretrain/step_000006/state.pt",
                "done/prep.json", "done/pretrain.json", "report/entropy_hist.png"]:
        assert (rd.path / rel).exists(), rel  # inputs of select, and the report folder is copied, not moved
    assert (aside / "report" / "report.md").exists()
    assert [json.loads(x)["stage"] for x in rd.metrics.read_text().splitlines()] == ["pretrain", "pretrain"]
    assert [json.loads(x)["stage"] for x in (aside / "metrics.jsonl").read_text().splitlines()] == [
        "rpt", "rl_rpt", "cnt", "rl_pretrain"]
    why = json.loads((aside / "why.json").read_text())
    assert why["forced"] == ["select"] and "rpt" in why["stale"] and "prep" not in why["stale"]


def test_the_same_forced_command_again_resumes_instead_of_starting_over_twice(tmp_path):
    """A forced call interrupted (preemption) and re-run as is (requeue) keeps the restarted stage's progress;
    once a call has finished, the same command starts over again."""
    rd = _fake_run(tmp_path)
    given = ["stage=pretrain", "force=true"]
    force.start_over(rd, {"pretrain"}, given)
    write_text(rd.checkpoints("pretrain") / "latest", "step_000003")  # the restart's progress before preemption
    force.start_over(rd, {"pretrain"}, given)
    assert (rd.checkpoints("pretrain") / "latest").exists() and len(list((rd.path / "superseded").iterdir())) == 1
    force.start_over(rd, {"pretrain"}, given + ["pretrain.lr=1e-3"])  # another command: starts over
    assert not (rd.checkpoints("pretrain") / "latest").exists()
    force.finished(rd)
    write_text(rd.checkpoints("pretrain") / "latest", "step_000006")
    force.start_over(rd, {"pretrain"}, given)
    assert not (rd.checkpoints("pretrain") / "latest").exists()
    assert len(list((rd.path / "superseded").iterdir())) == 3


def test_an_imported_tokenizer_goes_with_hf_import_not_prep(tmp_path):
    rd = _fake_run(tmp_path)
    write_text(rd.checkpoints("hf") / "latest", "step_000000")
    assert rd.tokenizer not in force.outputs(rd, "prep") and rd.tokenizer in force.outputs(rd, "hf_import")


# --- sweeps ----------------------------------------------------------------------------------------------------------


def test_sweep_jobs_resolve_their_own_run_dirs():
    jobs = job_run_dirs(["stage=pipeline", "experiment=remedies", "algo=grpo,kl_cov", "run.root=/r"], CONF_DIR)
    assert [d for d, _ in jobs] == [Path("/r/remedies_grpo"), Path("/r/remedies_kl_cov")]
    check_distinct(["stage=pipeline", "run.seed=0,1", "run.name=seed${run.seed}"], CONF_DIR)


def test_a_sweep_whose_jobs_would_share_a_run_is_refused_with_the_fix():
    with pytest.raises(SharedRunDir) as err:
        check_distinct(["stage=prep", "run.seed=0,1", "algo=grpo,forking", "run.name=x"], CONF_DIR)
    assert "x: 4 jobs" in str(err.value)
    assert "'run.name=x_${run.seed}_${hydra:runtime.choices.algo}'" in str(err.value)


# --- through the real CLI ------------------------------------------------------------------------------------------


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_command(rpt_command(*args, f"run.root={root}"), root, check=False, timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _rows(run: Path, stage: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["stage"] == stage]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A smoke run to pretrain, made with a group override (experiment=smoke: a 32-wide model) and algo=forking."""
    root = tmp_path_factory.mktemp("memory")
    _ok(_cli(root, "pipeline", "run.name=m", "experiment=smoke", "algo=forking", "stages=[prep,pretrain]",
             "pretrain.steps=2", "pretrain.log_every=1"))
    return root / "m"


@pytest.mark.e2e
def test_a_later_stage_starts_from_the_run_and_a_conflict_is_refused(pretrained):
    """`rpt select` without the first call's overrides builds the run's model (not the default shape, which
    failed with a megatron shape mismatch), keeps its algo; a changed model shape is refused, nothing written."""
    run = pretrained
    proc = _ok(_cli(run.parent, "select", "run.name=m", "select.top_k=8"))
    assert "inherited from overrides.yaml: experiment=smoke algo=forking" in proc.stderr
    assert (run / "done" / "select.json").exists()
    config = (run / "config.yaml").read_text()
    assert "hidden_size: 32" in config and "forking_rho: 0.2" in config and "top_k: 8" in config
    saved = {p: p.read_bytes() for p in [run / "overrides.yaml", run / "config.yaml"]}
    proc = _cli(run.parent, "select", "run.name=m", "model.hidden_size=64")
    assert proc.returncode != 0
    assert "model.hidden_size: stage `pretrain` finished with 32; this call asks for 64" in proc.stderr
    assert "force=true" in proc.stderr
    assert saved == {p: p.read_bytes() for p in saved}


@pytest.mark.e2e
def test_force_trains_a_finished_stage_again_and_keeps_the_old_one_aside(pretrained):
    run = pretrained
    if not (run / "done" / "select.json").exists():
        _ok(_cli(run.parent, "select", "run.name=m", "select.top_k=8"))
    old_rows = _rows(run, "pretrain")
    assert [r["step"] for r in old_rows] == [1, 2]
    proc = _ok(_cli(run.parent, "pretrain", "run.name=m", "force=true", "pretrain.lr=1e-3"))
    assert "start over" in proc.stderr
    new_rows = _rows(run, "pretrain")
    assert [r["step"] for r in new_rows] == [1, 2] and new_rows[0]["lr"] != old_rows[0]["lr"]  # trained again
    (aside,) = (run / "superseded").iterdir()
    assert (aside / "checkpoints" / "pretrain" / "step_000002").is_dir()
    assert (aside / "done" / "pretrain.json").exists() and (aside / "done" / "select.json").exists()
    assert (aside / "positions" / "entropy_shards").is_dir() and not (run / "positions").exists()
    assert [json.loads(x)["step"] for x in (aside / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "done" / "pretrain.json").exists() and not (run / "done" / "select.json").exists()  # stale
    assert "pretrain.lr=1e-3" in (run / "overrides.yaml").read_text()
    assert "force" not in (run / "overrides.yaml").read_text()


@pytest.mark.e2e
def test_a_sweep_gives_each_job_its_own_remembering_run(tmp_path):
    proc = _cli(tmp_path, "prep", "--multirun", "experiment=smoke", "run.seed=1,2")
    assert proc.returncode == 2 and "would share run directories" in proc.stderr
    assert not (tmp_path / "demo").exists()  # refused before any job started
    _ok(_cli(tmp_path, "prep", "--multirun", "experiment=smoke", "data.num_pretrain_docs=100",
             "run.name=s${run.seed}", "run.seed=1,2"))
    for seed in (1, 2):
        run = tmp_path / f"s{seed}"
        assert (run / "done" / "prep.json").exists()
        assert (run / "overrides.yaml").read_text().splitlines() == [
            "- experiment=smoke", "- data.num_pretrain_docs=100", f"- run.seed={seed}"]


def test_cfg_job_and_help_show_the_config_with_the_runs_remembered_overrides(tmp_path, capsys, monkeypatch):
    """`rpt <stage> --cfg job run.name=X` prints what the run will use: its remembered overrides under this call's."""

    import yaml

    from rpt import cli

    run = tmp_path / "x"
    run.mkdir()
    (run / "overrides.yaml").write_text(yaml.safe_dump(["experiment=smoke", "rollout.group_size=16"]))
    shown = yaml.safe_load(cli.remembered_config(["stage=rl", f"run.root={tmp_path}", "run.name=x", "rl.steps=5"]))
    assert shown["rollout"]["group_size"] == 16 and shown["model"]["name"] == "smoke" and shown["rl"]["steps"] == 5
    for flag in ("--cfg", "--help"):
        argv = ["rpt", "rl", f"run.root={tmp_path}", "run.name=x", flag] + (["job"] if flag == "--cfg" else [])
        monkeypatch.setattr(sys, "argv", argv)
        cli.main()
        out = capsys.readouterr().out
        assert "group_size: 16" in out and ("usage: rpt" in out) == (flag == "--help")
    assert sorted(p.name for p in run.iterdir()) == ["overrides.yaml"]  # shown, nothing written
