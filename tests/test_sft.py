"""Stage `sft`: worked demonstrations in several orders of operations (each right, each scored 1.0 by the task's own
verifier), the response-only loss mask, prompt/response files with bad records, and the stage through the CLI
(artifacts, a falling loss, an exact resume)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from rpt.config import RLTaskConfig, SFTConfig
from rpt.tasks.demonstrations import (
    THINK_CLOSE,
    Demonstration,
    chain_demonstrations,
    chain_value,
    file_demonstrations,
    worked_solution,
    worked_solutions,
)
from tests.helpers import rpt_command, run_command, stage_rows


def test_config_defaults_and_checks():
    from hydra import compose, initialize_config_dir

    from rpt import config as schema
    from rpt.cli import CONF_DIR

    schema.register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = schema.load(compose(config_name="config"))
        assert cfg.sft.steps is None and cfg.sft.source == "demo" and cfg.sft.init_from == "pretrain"  # rl's budget
        for override, field in [("sft.source=hub", "sft.source"), ("sft.orders=0", "sft.orders")]:
            with pytest.raises(ValueError, match=field):
                schema.load(compose(config_name="config", overrides=[override]))


def test_worked_solutions_hand_values():
    assert worked_solution("9 + 6 + 5") == "15 + 5 = 20"  # the demo corpus's left-to-right format
    assert worked_solution("4 - 1 + 7") == "3 + 7 = 10"
    assert worked_solution("5 + 3 - 0") == "8 - 0 = 8"  # unreduced operands are copied as written
    assert worked_solutions("9 + 6 + 5", 4) == ["15 + 5 = 20", "9 + 11 = 20", "5 + 6 + 9 = 11 + 9 = 20",
                                                 "9 + 5 + 6 = 14 + 6 = 20"]
    assert worked_solutions("9 + 6 + 3 + 4", 3) == ["15 + 3 + 4 = 18 + 4 = 22", "9 + 6 + 7 = 9 + 13 = 22",
                                                     "15 + 3 + 4 = 15 + 7 = 22"]
    assert worked_solutions("2 + 2", 4) == ["4"]  # one order only: fewer, never repeats
    for body in worked_solutions("4 - 1 - 7 + 7", 12):  # signed terms: every order of a "-" chain stays right
        assert all(chain_value(line) == 3 for line in body.split(" = ")), body
        assert body.endswith("= 3")


def test_demonstrations_are_diverse_right_and_rewarded(tokenizer):
    from data_prep.demo_corpus import render_problem
    from rpt.tasks.reasoning_gym_task import ReasoningGymTask

    task = ReasoningGymTask(RLTaskConfig(train_size=12), tokenizer, "train", 3)
    demos, skipped = chain_demonstrations(task, 4)
    assert not skipped and len(demos) == 4 * len(task)  # 4-term "+" chains have at least 4 orders
    for k, item in enumerate(task.items):
        own = demos[4 * k:4 * k + 4]
        answer = str(item["answer"])
        assert all(d.prompt == tuple(task.prompt_ids(item)) for d in own)
        assert all(d.response[-1] == tokenizer.eos_id for d in own)
        texts = [tokenizer.decode(d.response[:-1]) for d in own]
        assert len(set(texts)) == 4, texts
        for text in texts:
            body = text.split(THINK_CLOSE)[0].strip()
            lines = body.split(" = ")
            assert len(lines) >= 3 and all(chain_value(line) == int(answer) for line in lines), text
            assert lines[-1] == answer and text.endswith(f"{THINK_CLOSE} \\boxed{{{answer}}}")
            assert task.reward(item, text) == 1.0
        # the left-to-right demonstration is the demo corpus's worked document, less its trailing bare answer
        expression = item["metadata"]["expression"]
        assert task.prompt_text(item) + texts[0] + f" {answer}" == render_problem(expression, answer, True)


def test_loss_mask_covers_response_tokens_only(tiny_model):
    from rpt.model.forward import full_logits
    from rpt.stages.sft import pack, response_loss_sum

    demos = [Demonstration((5, 6, 7), (8, 9)), Demonstration((10,), (11, 12, 13))]
    tokens, mask = pack(demos, pad_id=0)
    assert tokens.tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]]
    # position t predicts token t + 1: row 0 trains on 8 (from 7) and 9 (from 8); row 1 on 11, 12, 13
    assert mask.tolist() == [[False, False, True, True], [True, True, True, False]]
    with torch.no_grad():
        got = response_loss_sum(tiny_model, tokens, mask)
        logp = torch.log_softmax(full_logits(tiny_model, tokens[:, :-1]), -1)
        by_hand = -(logp[0, 2, 8] + logp[0, 3, 9] + logp[1, 0, 11] + logp[1, 1, 12] + logp[1, 2, 13])
        assert torch.allclose(got, by_hand, rtol=1e-5)
        # padding and the batch split never change the loss: one example at a time sums to the same
        parts = sum(response_loss_sum(tiny_model, *pack([d], 0)) for d in demos)
        assert torch.allclose(got, parts, rtol=1e-5)


def _sft_cfg(path, **kw) -> SFTConfig:
    return SFTConfig(source="jsonl", path=str(path), **kw)


def test_jsonl_records_with_bad_ones_are_counted_and_skipped(tmp_path, tokenizer):
    rows = [{"prompt": "1 + 2 = <think>", "response": " 3 </think> \\boxed{3}"},
            {"prompt": "Q: 4 + 4?", "response": "8"},  # text that parses as JSON, in a mixed-type column
            {"prompt": "no response"},  # missing field
            {"response": "no prompt"},  # missing field
            {"prompt": 5, "response": "five"},  # not text
            {"prompt": "list", "response": ["a", "b"]},  # not text
            {"prompt": "   ", "response": "blank prompt"},  # empty
            {"prompt": "empty response", "response": ""},  # empty
            {"prompt": "long", "response": "x " * 400}]  # longer than the cap
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    demos, skipped = file_demonstrations(_sft_cfg(path), tokenizer, max_tokens=256)
    assert dict(skipped) == {"missing field": 2, "not text": 2, "empty": 2, "too long": 1}
    assert len(demos) == 2
    assert demos[0].prompt == tuple(tokenizer.encode(rows[0]["prompt"]))
    assert demos[0].response == (*tokenizer.encode(rows[0]["response"]), tokenizer.eos_id)
    assert tokenizer.decode(demos[1].response[:-1]) == "8"

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"fields \['prompt', 'response'\] are in no record"):
        file_demonstrations(_sft_cfg(other), tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows[2:8]))
    with pytest.raises(ValueError, match="no usable prompt/response record"):
        file_demonstrations(_sft_cfg(bad), tokenizer)


# --- the stage through the CLI -------------------------------------------------------------------------------------

README_LINES = ("rpt sft",)  # run by test_resumed_sft_... with the run's name and root (tests/test_readme.py)
SFT_OVERRIDES = ["stages=[prep,pretrain,sft]", "rl.steps=6", "sft.checkpoint_every=3", "sft.micro_batch_size=5",
                 "sft.lr=3e-3", "sft.min_lr=3e-3", "sft.warmup_steps=0"]


def _args(root: Path, name: str, *overrides: str) -> list[str]:
    return ["experiment=smoke", f"run.root={root}", f"run.name={name}", *SFT_OVERRIDES, *overrides]


def _cmd(root: Path, name: str, stage: str, *overrides: str) -> list[str]:
    return rpt_command(stage, *_args(root, name, *overrides))


def _rows(run_dir: Path) -> list[dict]:
    return stage_rows(run_dir, "sft")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_runs")
    run_command(_cmd(root, "ref", "pipeline"), cwd=root)
    return root / "ref"


@pytest.mark.e2e
def test_pipeline_sft_trains_and_checkpoints(sft_run):
    assert (sft_run / "checkpoints" / "sft" / "latest").read_text().strip() == "step_000006"
    summary = json.loads((sft_run / "done" / "sft.json").read_text())
    # the rl budget: rl.steps steps of rl.prompts_per_step x rollout.group_size = 4 x 4 sequences
    assert summary["steps"] == 6 and summary["sequences_per_step"] == 16
    assert summary["demonstrations"] == 50 * 4  # smoke: 50 training questions, 4 orders each
    rows = _rows(sft_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert all(math.isfinite(r["grad_norm"]) and r["lr"] > 0 and r["tokens"] > 16 for r in rows)
    assert sum(losses[3:]) / 3 < sum(losses[:3]) / 3 and losses[-1] < losses[0], losses


@pytest.mark.e2e
def test_resumed_sft_keeps_every_metrics_row(sft_run, tmp_path):
    run = tmp_path / "ref"
    shutil.copytree(sft_run, run)
    (run / "checkpoints" / "sft" / "latest").write_text("step_000003")  # as if killed after step 3
    (run / "done" / "sft.json").unlink()
    run_command(_cmd(tmp_path, "ref", "sft"), cwd=tmp_path)
    assert (run / "checkpoints" / "sft" / "latest").read_text().strip() == "step_000006"
    assert _rows(run) == _rows(sft_run)


@pytest.mark.e2e
def test_eval_scores_the_sft_checkpoint_and_where_its_change_lands(sft_run, tmp_path):
    run = tmp_path / "ref"
    shutil.copytree(sft_run, run)
    run_command(_cmd(tmp_path, "ref", "pipeline", "stages=[select,eval]", "rl_task.train_on=[]"), cwd=tmp_path)
    ds = json.loads((run / "eval" / "downstream.json").read_text())
    downstream = ds["results"]
    assert {"base", "sft"} <= set(downstream) and "pass@1" in downstream["sft"]
    for name in ("base", "sft"):  # the diversity of each question's samples, side by side
        d = ds["diversity"][name]
        assert 1.0 <= d["distinct_trajectories"] <= 2.0 and 0.0 <= d["pairwise_similarity"] <= 1.0
    from rpt.analysis.report_md import diversity_table

    table = diversity_table(ds)
    assert "| sft |" in table and "| base |" in table and "distinct trajectories" in table
    concentration = json.loads((run / "eval" / "concentration.json").read_text())
    assert concentration["sft"]["before"] == "pretrain" and concentration["sft"]["tokens"] > 0


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """The sft stage's full weights from its dist-checkpoint, loaded through torch DCP (as tests/test_parallel.py)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    step = (run / "checkpoints" / "sft" / "latest").read_text().strip()
    out = run / "weights.pt"
    dcp_to_torch_save(str(run / "checkpoints" / "sft" / step), str(out))
    state = torch.load(out, weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("optimizer") and isinstance(v, torch.Tensor)}


@pytest.mark.multiprocess
def test_dp2_sft_matches_one_process(sft_run, tmp_path):
    """Two gloo ranks, each with half of every step's sequences (and other micro-batch cuts: 5 + 3 per rank against
    5 + 5 + 5 + 1), log the same loss and token counts and train the same weights as one process."""
    run = tmp_path / "ref"
    shutil.copytree(sft_run, run, ignore=shutil.ignore_patterns("sft", "sft.json", "metrics.jsonl", "weights.pt"))
    run_command(rpt_command("sft", *_args(tmp_path, "ref"), nproc=2), cwd=tmp_path)
    one, two = _rows(sft_run), _rows(run)
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one, two, strict=True):
        assert b["tokens"] == a["tokens"]
        for key in ("loss", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    w1, w2 = _weights(sft_run), _weights(run)
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=1e-4, msg=key)
