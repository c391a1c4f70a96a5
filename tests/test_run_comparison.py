"""The aggregate report's one-row-per-run table and per-run curves (the algorithm comparison of
``experiment=remedies``): each run's own numbers, never averaged with the other algorithms."""

from __future__ import annotations

import json

from rpt.analysis.aggregate import build_aggregate_report


def _run(root, name, hard, pass1, entropies, checkpoint="rl_rpt"):
    ev = root / name / "eval"
    ev.mkdir(parents=True)
    buckets = {"easy": {"accuracy": 0.5, "n": 10}, "medium": {"accuracy": 0.25, "n": 8},
               "hard": {"accuracy": hard, "n": 4}}
    (ev / "next_token.json").write_text(json.dumps({"positions": 22, "thresholds": [0.5, 1.0, 1.5],
                                                    "results": {"rpt": {"reasoning_greedy": buckets}}}))
    (ev / "downstream.json").write_text(json.dumps({
        "task": "chain_sum", "results": {"base": {"greedy": 0.1, "pass@1": 0.05, "n": 20},
                                         checkpoint: {"greedy": 0.9, "pass@1": pass1, "n": 20}},
        "diversity": {checkpoint: {"distinct_answers": 2.5, "pairwise_similarity": 0.75}}}))
    rows = [{"stage": "rpt", "step": i + 1, "entropy": e, "val/accuracy": 0.1 * i} for i, e in enumerate(entropies)]
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_one_row_per_algorithm_with_curves(tmp_path):
    _run(tmp_path, "remedies_grpo", 0.25, 0.4, [1.0, 0.8, 0.6, 0.2])
    _run(tmp_path, "remedies_sdpo", 0.75, 0.6, [1.0, 1.0, 0.9, 0.7], checkpoint="rpt")  # a run without `rl`
    out = tmp_path / "agg" / "report"
    text = build_aggregate_report(tmp_path, ["remedies_grpo", "remedies_sdpo"], out, "agg").read_text()
    # last quarter of 4 steps = the last step's entropy
    assert "| `remedies_grpo` | 50.0 | 25.0 | 25.0 | 40.0 (`rl_rpt`) | 0.200 | 2.500 | 0.750 |" in text
    assert "| `remedies_sdpo` | 50.0 | 25.0 | 75.0 | 60.0 (`rpt`) | 0.700 | 2.500 | 0.750 |" in text
    assert (out / "rpt_entropy_by_run.png").is_file() and (out / "rpt_val_accuracy_by_run.png").is_file()
    assert "](rpt_entropy_by_run.png)" in text
