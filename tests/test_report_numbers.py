"""The report's numbers: Wilson intervals against hand computation, validation curves and the entropy law on
validation accuracy, the samples section (good/bad picks, malformed lines, output that tries to break the
markdown), and the aggregate over runs (exact mean/std, missing cells, refusal of runs without eval outputs).
Every test writes real run directories into tmp_path and calls the real report code."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rpt.analysis.aggregate import build_aggregate_report, resolve_runs
from rpt.analysis.intervals import fmt_accuracy, wilson_interval
from rpt.analysis.report_md import build_report
from rpt.analysis.samples import clean, fence
from rpt.config import RootConfig
from rpt.rundir import RunDir, write_json

# ---------------------------------------------------------------------------------------------- helpers


def eval_files(run: Path, nt_results: dict, ds_results: dict, positions: int = 300) -> None:
    write_json(run / "eval" / "next_token.json", {"positions": positions, "thresholds": [0.5, 1.0, 1.5],
                                                  "results": nt_results})
    write_json(run / "eval" / "downstream.json", {"task": "chain_sum", "results": ds_results})


def buckets(easy, medium, hard, n=(300, 94, 37)) -> dict:
    return {"easy": {"accuracy": easy, "n": n[0]}, "medium": {"accuracy": medium, "n": n[1]},
            "hard": {"accuracy": hard, "n": n[2]}}


def demo_eval(run: Path) -> None:
    eval_files(run, {"base": {"direct": buckets(0.543, 38 / 94, 9 / 37), "reasoning_avg@4": buckets(0.1, 0.05, 0.0)}},
               {"base": {"greedy": 0.135, "avg@4": 0.12, "n": 200}})


def write_metrics(run: Path, rows: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rl_rows(stage: str, steps: int) -> list[dict]:
    return [{"stage": stage, "step": s, "reward_mean": 0.1 + 0.01 * s, "entropy": 0.8 - 0.05 * s,
             "entropy_forking": 1.0, "all_equal_share": 0.5, "response_length": 20.0} for s in range(steps)]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def report_of(run: Path, cfg: RootConfig | None = None) -> str:
    cfg = cfg or RootConfig()
    return build_report(cfg, RunDir(run.parent, run.name)).read_text()


# ---------------------------------------------------------------------------------------------- Wilson


def test_wilson_interval_matches_hand_computation():
    # z = 1.96, z² = 3.8416. 5/10: denominator 1 + z²/n = 1.38416, centre (0.5 + 0.19208) / 1.38416 = 0.5,
    # half-width 1.96 / 1.38416 · sqrt(0.025 + 0.009604) = 1.416021 · 0.186022 = 0.263410
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.236590, abs=1e-6) and hi == pytest.approx(0.763410, abs=1e-6)
    # 0/10: centre 0.19208 / 1.38416 = 0.138770, half 1.416021 · sqrt(3.8416 / 400) = 0.138770 → [0, 0.277540]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277540, abs=1e-6)
    lo, hi = wilson_interval(10, 10)  # the mirror image of 0/10
    assert lo == pytest.approx(1 - 0.277540, abs=1e-6) and hi == 1.0
    # 9/37 (the demo's hard bucket): p = 0.243243, denominator 1.103827, centre 0.267397,
    # half 1.775640 · sqrt(0.004975 + 0.000702) = 0.133785 → [0.133612, 0.401176]
    lo, hi = wilson_interval(9, 37)
    assert lo == pytest.approx(0.133612, abs=1e-6) and hi == pytest.approx(0.401176, abs=1e-6)
    assert fmt_accuracy(9 / 37, 37) == "24.3% [13.4, 40.1] (n=37)"
    assert wilson_interval(0, 0) is None
    assert fmt_accuracy(None, 0) == "– (n=0)" and fmt_accuracy(0.5, 0) == "– (n=0)"
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# ---------------------------------------------------------------------------------------------- report tables


def test_report_cells_carry_wilson_interval_and_n(tmp_path):
    run = tmp_path / "r"
    demo_eval(run)
    text = report_of(run)
    assert "| base | direct | 54.3% [48.6, 59.8] (n=300) | 40.4% [31.1, 50.5] (n=94) | 24.3% [13.4, 40.1] (n=37) |" \
        in text
    assert "| base | 13.5% [9.4, 18.9] (n=200) | 12.0% [8.2, 17.2] (n=200) |" in text
    assert "avg@k" in text and "conservative" in text  # how the interval of a k-sample mean is taken
    assert "Validation" not in text and "## Samples" not in text  # no val keys, no rollouts: as before


# ---------------------------------------------------------------------------------------------- validation


def test_validation_curves_and_entropy_law_on_validation_accuracy(tmp_path):
    run = tmp_path / "r"
    demo_eval(run)
    rows = rl_rows("rpt", 10) + rl_rows("rl_pretrain", 6) + rl_rows("rl_rpt", 6)
    a, b = 0.3, 0.9
    for r in rows:
        if r["stage"] == "rpt" and r["step"] % 3 == 0:  # steps 0, 3, 6, 9: exactly on the law
            acc = -a * math.exp(r["entropy"]) + b
            r.update({"val/accuracy": acc, "val/n": 64, "val/accuracy_easy": acc, "val/n_easy": 64,
                      "val/accuracy_medium": acc / 2, "val/n_medium": 30, "val/accuracy_hard": None,
                      "val/n_hard": 0})
        if r["stage"] == "rl_pretrain" and r["step"] in (2, 5):  # downstream stage: two points only
            r.update({"val/accuracy": 0.25, "val/n": 40})
    write_metrics(run, rows)
    text = report_of(run)
    rpt_part = text.split("### `rpt`")[1].split("### `rl_pretrain`")[0]
    assert "Validation (greedy, fixed held-out sample; 4 measurements)" in rpt_part
    assert "a = 0.3000, b = 0.9000, R² = 1.000 over n = 4 validation points" in rpt_part
    assert f"ceiling −a + b = {100 * (b - a):.1f}%" in rpt_part
    last = -a * math.exp(0.8 - 0.45) + b
    assert f"step 9 {fmt_accuracy(last, 64)}" in rpt_part and "medium " + fmt_accuracy(last / 2, 30) in rpt_part
    assert "hard" not in rpt_part.split("by bucket:")[1].split("\n")[0]  # an empty bucket is not reported
    assert "rpt_val_entropy_law.png" in rpt_part
    assert png_size(run / "report" / "rpt_val_entropy_law.png")[0] > 0
    w, h = png_size(run / "report" / "rpt_reward.png")  # two panels (reward over validation): taller than wide×0.75
    assert h > 0.75 * w
    pre = text.split("### `rl_pretrain`")[1].split("### `rl_rpt`")[0]
    assert "too few validation points to fit (2 with entropy, 3 needed)" in pre
    assert "Validation" not in text.split("### `rl_rpt`")[1]
    w, h = png_size(run / "report" / "rl_rpt_reward.png")  # no validation keys: the single-panel plot
    assert h < 0.75 * w


# ---------------------------------------------------------------------------------------------- samples

HOSTILE = "2 | 3 |\n|---|---|\n```\n# not a heading\n```` and `` ` `` \x07 done \\boxed{5}"


def sample(reward, response="<think> 2 + 3 = 5 </think> \\boxed{5}", **kw) -> str:
    row = {"step": 10, "context": "1 + 2 + 2 =", "response": response, "answer": "5", "reference": " 5",
           "reward": reward, "truncated": False, **kw}
    return json.dumps(row)


def fenced_blocks(markdown: str) -> list[str]:
    """Contents of backtick fences (CommonMark: a fence closes on a line of at least as many backticks)."""
    blocks, lines, i = [], markdown.split("\n"), 0
    while i < len(lines):
        opening = len(lines[i]) - len(lines[i].lstrip("`"))
        if opening >= 3:
            j = i + 1
            while j < len(lines) and not (set(lines[j]) == {"`"} and len(lines[j]) >= opening):
                j += 1
            blocks.append("\n".join(lines[i + 1:j]))
            i = j
        i += 1
    return blocks


def write_rollouts(run: Path) -> None:
    older = run / "rollouts" / "rpt" / "step_000002.jsonl"
    older.parent.mkdir(parents=True)
    older.write_text(sample(1.0, response="OLDER STEP") + "\n")
    lines = [sample(0.25), "not json", sample(0.0, response="wrong one"), "[1, 2]", '{"step": 10}',
             sample(1.0, response=HOSTILE), sample("NaN"), "", sample(0.5, response="x" * 5000),
             sample(0.0, response="wrong two"), sample(0.0, response="wrong three", truncated=True)]
    (run / "rollouts" / "rpt" / "step_000010.jsonl").write_text("\n".join(lines) + "\n")
    (run / "rollouts" / "rl_rpt").mkdir(parents=True)
    (run / "rollouts" / "rl_rpt" / "step_000004.jsonl").write_text("")


def test_samples_section_picks_good_and_bad_and_survives_hostile_output(tmp_path):
    run = tmp_path / "r"
    demo_eval(run)
    write_rollouts(run)
    cfg = RootConfig()
    cfg.report.sample_chars = 100
    text = report_of(run, cfg)
    section = text.split("## Samples")[1]
    rpt_part = section.split("### `rl_rpt`")[0]
    assert "`rollouts/rpt/step_000010.jsonl`: 6 rollouts (4 malformed line(s) skipped)" in rpt_part
    assert "OLDER STEP" not in section  # only the latest step file
    assert "**good 1** — reward 1.000" in rpt_part and "**good 2** — reward 0.500" in rpt_part
    assert "reward 0.250" not in rpt_part  # two good ones, the highest
    assert "wrong one" in rpt_part and "wrong two" in rpt_part and "wrong three" not in rpt_part
    assert "x" * 51 not in rpt_part and "x" * 50 + " … " + "x" * 50 in rpt_part  # capped, both ends kept
    blocks = fenced_blocks(section)
    hostile = [blk for blk in blocks if "not a heading" in blk]
    assert len(hostile) == 1  # the fence did not end at the response's own ``` or ````
    assert clean(HOSTILE, 100) in hostile[0] and "\\x07" in hostile[0] and "\x07" not in section
    assert len(blocks) == 4  # two good, two bad: nothing else opened a fence
    assert "### `rl_rpt`" in section and "0 rollouts. Nothing to show." in section.split("### `rl_rpt`")[1]
    assert "rl_pretrain" not in section  # no rollouts directory: nothing said


def test_samples_render_as_one_code_block_each_under_a_markdown_parser(tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    run = tmp_path / "r"
    demo_eval(run)
    write_rollouts(run)
    section = "## Samples" + report_of(run).split("## Samples")[1]
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(section)
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 4 and not any(t.type == "table_open" for t in tokens)
    assert sum(t.type == "heading_open" for t in tokens) == 3  # Samples, rpt, rl_rpt: the output made none
    assert any(clean(HOSTILE, 400) in t.content for t in fences)
    assert fence("a ```` b").startswith("`````text\n")


# ---------------------------------------------------------------------------------------------- aggregate

DIRECT = {"s0": (0.2, 0.5), "s1": (0.3, 0.6), "s2": (0.4, 0.7)}  # hard, easy per run
GREEDY = {"s0": 0.1, "s1": 0.2, "s2": 0.6}


def three_runs(root: Path) -> None:
    for name in ("s0", "s1", "s2"):
        hard, easy = DIRECT[name]
        nt = {"base": {"direct": buckets(easy, 0.4, hard)}}
        if name != "s2":
            nt["cnt"] = {"direct": buckets(0.5, 0.5, 0.5)}
        eval_files(root / name, nt, {"rl_rpt": {"greedy": GREEDY[name], "avg@4": 0.25, "n": 200}})


def test_aggregate_of_three_runs_has_exact_mean_and_std(tmp_path):
    three_runs(tmp_path)
    path = build_aggregate_report(tmp_path, ["s0", "s1", "s2"], tmp_path / "agg" / "report", "agg")
    text = path.read_text()
    # base/direct: easy 50/60/70 → 60.0 ± 10.0, medium 40 each → ± 0.0, hard 20/30/40 → 30.0 ± 10.0
    assert "| base | direct | 60.0 ± 10.0 (3 runs) | 40.0 ± 0.0 (3 runs) | 30.0 ± 10.0 (3 runs) |" in text
    # greedy 10/20/60: mean 30, sample std sqrt((400 + 100 + 900) / 2) = sqrt(700) = 26.46
    assert "| rl_rpt | 30.0 ± 26.5 (3 runs) | 25.0 ± 0.0 (3 runs) |" in text
    assert "| cnt | direct | 50.0 ± 0.0 (2 runs) |" in text  # s2 has no cnt: left out of the cell
    assert "cnt / direct / hard: no value in `s2`" in text
    assert f"| base | direct | hard | {fmt_accuracy(0.2, 37)} | {fmt_accuracy(0.3, 37)} | {fmt_accuracy(0.4, 37)} |" \
        in text  # per-run values with their intervals
    assert "| cnt | direct | easy | " + f"{fmt_accuracy(0.5, 300)} | {fmt_accuracy(0.5, 300)} | – |" in text


def test_aggregate_refuses_runs_without_eval_outputs(tmp_path):
    three_runs(tmp_path)
    (tmp_path / "s1" / "eval" / "downstream.json").unlink()
    (tmp_path / "s3").mkdir()
    with pytest.raises(ValueError, match=r"s1: no eval/downstream.json; s3: no eval/next_token.json, eval/down"):
        build_aggregate_report(tmp_path, ["s0", "s1", "s2", "s3"], tmp_path / "agg" / "report", "agg")
    assert not (tmp_path / "agg" / "report" / "report.md").exists()
    with pytest.raises(ValueError, match="aggregate's own run.name"):
        resolve_runs(tmp_path, ["s0", "agg"], exclude="agg")
    with pytest.raises(ValueError, match="matches no run directory"):
        resolve_runs(tmp_path, ["seed*"], exclude="agg")
    (tmp_path / "s_agg").mkdir()
    assert resolve_runs(tmp_path, ["s?", "s0"], exclude="s_agg") == ["s0", "s1", "s2", "s3"]
    assert resolve_runs(tmp_path, ["s*"], exclude="s_agg") == ["s0", "s1", "s2", "s3"]


def test_aggregate_through_the_cli(tmp_path):
    """The documented command: `rpt report run.name=<agg> 'report.runs=[pattern]'` over finished runs."""
    three_runs(tmp_path)
    cmd = [sys.executable, "-m", "rpt.cli", "report", f"run.root={tmp_path}", "run.name=seeds",
           "report.runs=[s*]", "logging=disabled", "run.device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "seeds" / "report" / "report.md").read_text()
    assert "# Aggregate of 3 runs: `seeds`" in text and "| base | direct | 60.0 ± 10.0 (3 runs) |" in text
    assert json.loads((tmp_path / "seeds" / "done" / "report.json").read_text())["aggregated_runs"] == \
        ["s0", "s1", "s2"]
    for name, group in (("s0", 4), ("s1", 4), ("s2", 1)):  # s2 made with another group size
        (tmp_path / name / "config.yaml").write_text(f"run:\n  seed: {name[1]}\nrollout:\n  group_size: {group}\n")
    proc = subprocess.run(cmd + ["force=true"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "rollout.group_size: s0=4, s1=4, s2=1" in proc.stderr
    assert "report.allow_mixed=true" in proc.stderr.splitlines()[-1]
    (tmp_path / "s2" / "eval" / "next_token.json").unlink()
    proc = subprocess.run(cmd + ["force=true", "report.allow_mixed=true"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "s2: no eval/next_token.json" in proc.stderr


def test_runs_that_differ_beyond_the_seed_are_named_in_the_aggregate(tmp_path):
    from rpt.run_memory import settings_that_differ

    for name, seed, algo in (("a", 0, "ppo"), ("b", 1, "kl_cov"), ("c", 2, "ppo")):
        eval_files(tmp_path / name, {"base": {"direct": buckets(0.5, 0.4, 0.3)}}, {"base": {"greedy": 0.2, "n": 9}})
        (tmp_path / name / "config.yaml").write_text(
            f"run:\n  name: {name}\n  seed: {seed}\nalgo:\n  policy_loss: {algo}\nlogging:\n  project: {name}\n")
    differ = settings_that_differ(tmp_path, ["a", "b", "c"])
    assert differ == {"algo.policy_loss": {"a": "ppo", "b": "kl_cov", "c": "ppo"}}  # not the name, seed or logging
    assert settings_that_differ(tmp_path, ["a", "c"]) == {}
    text = build_aggregate_report(tmp_path, ["a", "b", "c"], tmp_path / "agg" / "report", "agg", differ).read_text()
    assert "**The runs differ in settings beyond the seed**" in text and "`algo.policy_loss` a=ppo, b=kl_cov" in text


def test_aggregate_lists_each_downstream_metric_once(tmp_path):
    """Every checkpoint carries the same metrics: the table has one column per metric, not one per checkpoint."""
    for name in ("a", "b"):
        eval_files(tmp_path / name, {"base": {"direct": buckets(0.5, 0.4, 0.3)}},
                   {"base": {"greedy": 0.2, "pass@1": 0.1, "n": 200}, "rpt": {"greedy": 0.3, "pass@1": 0.2, "n": 200}})
    text = build_aggregate_report(tmp_path, ["a", "b"], tmp_path / "agg" / "report", "agg").read_text()
    assert "| checkpoint | greedy | pass@1 |\n" in text
    assert text.count("| rpt | greedy |") == 1


def test_aggregate_pools_runs_and_states_the_headline(tmp_path):
    """RPT reasoning first against the base's direct guess on hard positions: the headline from the per-run paired
    differences and their t-interval over seeds (these files predate per-position scores: the differences come from
    the bucket accuracies), the pooled table (each run's positions counted once) kept as a description."""
    for name, (rpt_hard, base_hard) in {"s0": (0.5, 0.2), "s1": (0.4, 0.3), "s2": (0.25, 0.3)}.items():
        eval_files(tmp_path / name, {"base": {"direct": buckets(0.5, 0.4, base_hard, n=(300, 94, 40))},
                                     "rpt": {"reasoning_greedy": buckets(0.6, 0.5, rpt_hard, n=(300, 94, 40))}},
                   {"base": {"greedy": 0.2, "n": 200}})
    text = build_aggregate_report(tmp_path, ["s0", "s1", "s2"], tmp_path / "agg" / "report", "agg").read_text()
    # pooled hard: RPT (20 + 16 + 10) / 120, base (8 + 12 + 12) / 120
    rpt, base = fmt_accuracy(46 / 120, 120), fmt_accuracy(32 / 120, 120)
    assert f"| rpt | reasoning_greedy | {fmt_accuracy(0.6, 900)} | {fmt_accuracy(0.5, 282)} | {rpt} |" in text
    assert f"| base | direct | {fmt_accuracy(0.5, 900)} | {fmt_accuracy(0.4, 282)} | {base} |" in text
    # paired hard differences +30, +10, −5: mean 11.7, s = 0.175594, t(0.975, 2) = 4.302653 → half 0.436199
    assert "differences +30.0, +10.0, -5.0; RPT above in 2 of 3 runs" in text
    assert "the 95% t-interval over seeds [-32.0, +55.3] includes 0" in text
    assert "apart" not in text.split("### Paired differences")[0]
    for name in ("s0", "s1", "s2"):  # far apart once RPT is well above everywhere
        eval_files(tmp_path / name, {"base": {"direct": buckets(0.5, 0.4, 0.2, n=(300, 94, 40))},
                                     "rpt": {"reasoning_greedy": buckets(0.6, 0.5, 0.6, n=(300, 94, 40))}},
                   {"base": {"greedy": 0.2, "n": 200}})
    text = build_aggregate_report(tmp_path, ["s0", "s1", "s2"], tmp_path / "agg" / "report", "agg").read_text()
    assert "RPT above in 3 of 3 runs" in text and "[+40.0, +40.0] is apart from zero: RPT above." in text
