"""Layout independence: 2 gloo processes (DP=2, and separately TP=2) against 1 process on the same global
batch: the logged losses and the trained weights match to tolerance. Runs the real CLI under torchrun.

The runs train with SGD at a large learning rate: a weight then moves by lr x its gradient, so layouts whose
gradients agree to rounding end with weights that agree to rounding on any CPU. Adam's first steps move each
weight by about lr x sign(gradient), and the sign of a near-zero gradient follows summation order (two
half-batches summed against one batch, a split matmul), so Adam's weights can differ by 2 x lr between layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import rpt_command, run_command

pytestmark = pytest.mark.multiprocess

SGD = ["optimizer=sgd", "lr=0.5", "min_lr=0.5"]
BASE = ["experiment=smoke", "select.shard_docs=16", "pretrain.steps=4", "pretrain.log_every=1",
        "pretrain.checkpoint_every=4", *(f"pretrain.{o}" for o in SGD)]


def _cli(root: Path, nproc: int, *args: str) -> None:
    """Run ``rpt <args>`` in one process, or under torchrun with ``nproc`` gloo processes."""
    run_command(rpt_command(*args, f"run.root={root}", *BASE, nproc=nproc), cwd=root)


def _run(root: Path, name: str, nproc: int, *overrides: str) -> Path:
    _cli(root, nproc, "pipeline", "stages=[prep,pretrain]", f"run.name={name}", *overrides)
    return root / name


def _copy_run(single: Path, name: str, *drop: str) -> Path:
    """A copy of the single-process run (same data, tokenizer and, unless dropped, checkpoints)."""
    run = single.parent / name
    shutil.copytree(single, run, ignore=shutil.ignore_patterns("metrics.jsonl", "weights.pt", "cache", *drop))
    return run


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["stage"] == "pretrain"]


def _weights(run: Path, stage: str = "pretrain") -> dict[str, torch.Tensor]:
    """Full (unsharded) weights from the dist-checkpoint, loaded without megatron through torch DCP."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    step = (run / "checkpoints" / stage / "latest").read_text().strip()
    out = run / "weights.pt"
    dcp_to_torch_save(str(run / "checkpoints" / stage / step), str(out))
    state = torch.load(out, weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("optimizer") and isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("par")
    return _run(root, "single", 1, "pretrain.micro_batch_size=4")


@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_two_processes_match_one(single, layout):
    root = single.parent
    # reuse the single run's prepared data and tokenizer so both layouts train on identical inputs
    run = _copy_run(single, layout, "checkpoints", "pretrain.json", "positions")
    overrides = ["pretrain.micro_batch_size=2"] if layout == "dp2" else ["pretrain.micro_batch_size=4",
                                                                         "run.tensor_parallel=2"]
    _run(root, layout, 2, *overrides)
    assert _losses(run) == pytest.approx(_losses(single), abs=1e-5)
    w1, w2 = _weights(single), _weights(run)
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=1e-4, msg=key)


def test_tp2_checkpoint_loads_under_tp1(single):
    """Megatron dist-checkpoints reshard: the TP=2 pretrain checkpoint drives a TP=1 `select` stage, whose
    entropies equal those computed from the single-process checkpoint."""
    import numpy as np

    root = single.parent
    run = root / "tp2"
    if not (run / "done" / "pretrain.json").exists():
        pytest.skip("needs the tp2 run of test_two_processes_match_one")
    for name in ("single", "tp2"):
        _cli(root, 1, "select", f"run.name={name}")
    a, b = (np.concatenate([np.load(p)["entropy"] for p in sorted((r / "positions" / "entropy_shards").glob(
        "shard_*.npz"))]) for r in (single, run))
    np.testing.assert_allclose(b, a, atol=2e-3, equal_nan=True)


def test_tp2_rpt_steps_match_one_process(single):
    """Rollouts, loss and update under TP=2 equal one process: same samples (the same seed on both TP ranks,
    logits gathered), same logged loss, gradient norm and entropy, same trained weights. An entropy bonus makes
    every step update even though the 4-step smoke model earns no reward yet."""
    if not (single / "done" / "select.json").exists():
        _cli(single.parent, 1, "select", "run.name=single")
    runs = {}
    for name, nproc, extra in [("rpt_one", 1, []), ("rpt_tp2", 2, ["run.tensor_parallel=2"])]:
        runs[name] = _copy_run(single, name, "rpt.json")
        _cli(single.parent, nproc, "rpt", f"run.name={name}", "algo.entropy_coef=0.01", *(f"rpt.{o}" for o in SGD),
             *extra)
    rows = {name: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for name, run in runs.items()}
    one, tp2 = ([r for r in rows[name] if r["stage"] == "rpt"] for name in ("rpt_one", "rpt_tp2"))
    assert len(one) == len(tp2) == 3 and all(r["update_applied"] == 1.0 for r in one + tp2)
    for a, b in zip(one, tp2, strict=True):
        assert b["response_length"] == a["response_length"]
        for key in ("loss", "grad_norm", "entropy", "reward_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    w1, w2 = _weights(runs["rpt_one"], "rpt"), _weights(runs["rpt_tp2"], "rpt")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=1e-4, msg=key)


def test_two_process_scoring_matches_one(single):
    """`select` spread over 2 data-parallel processes stores the same entropies and picks the same positions."""
    import numpy as np

    if not (single / "done" / "select.json").exists():
        _cli(single.parent, 1, "select", "run.name=single")
    run = _copy_run(single, "score_dp2", "positions", "select.json")
    _cli(single.parent, 2, "select", "run.name=score_dp2")
    shards = sorted(p.name for p in (single / "positions" / "entropy_shards").glob("shard_*.npz"))
    assert shards == sorted(p.name for p in (run / "positions" / "entropy_shards").glob("shard_*.npz")) and shards
    for name in shards:
        a, b = (np.load(r / "positions" / "entropy_shards" / name) for r in (single, run))
        np.testing.assert_array_equal(b["lengths"], a["lengths"])
        np.testing.assert_allclose(b["entropy"], a["entropy"], atol=1e-5, equal_nan=True)
    for split in ("train.npy", "validation.npy", "test.npy"):
        assert (run / "positions" / split).read_bytes() == (single / "positions" / split).read_bytes(), split


@pytest.mark.parametrize("cap", [None, 100])
def test_two_process_prep_matches_one(tmp_path, cap):
    """`prep` on a local jsonl (with bad records and duplicates) spread over 2 processes, each reading and
    tokenising its shard, writes byte-identical indexed datasets and the same ingest summary as 1 process
    streaming the same file (and with a document cap, the same first documents)."""
    from data_prep.demo_corpus import generate_documents
    from tests.conftest import demo_data_cfg

    texts = generate_documents(demo_data_cfg(), 160, 0.5, seed=3)
    lines = [json.dumps({"text": t}) for t in texts] + ["{not json", json.dumps({"text": ""}),
                                                        json.dumps({"text": texts[0]}), json.dumps({"body": "x"})]
    lines.insert(40, json.dumps({"text": texts[100]}))  # a duplicate whose first copy is in the other shard
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    data = ["data=jsonl", f"data.source={corpus}", "data.vocab_size=320", "data.seq_length=64",
            f"data.max_docs={cap if cap else 'null'}"]
    _cli(tmp_path, 1, "prep", "run.name=one", "data.streaming=true", *data)
    _cli(tmp_path, 2, "prep", "run.name=two", *data)
    assert not list((tmp_path / "two" / "data" / "parts").iterdir())  # the per-process parts are merged away
    for name in ("pretrain", "rpt"):
        one = json.loads((tmp_path / "one" / "data" / f"{name}.manifest.json").read_text())
        two = json.loads((tmp_path / "two" / "data" / f"{name}.manifest.json").read_text())
        assert one == two and one["documents"] > 0, name
    summary = json.loads((tmp_path / "one" / "data" / "ingest_summary.json").read_text())
    summary_two = json.loads((tmp_path / "two" / "data" / "ingest_summary.json").read_text())
    if cap is None:
        assert summary == summary_two
        assert summary["skipped"] == {"bad_json": 1, "empty": 1, "duplicate": 2, "missing_field": 1}
        assert summary["kept"] == 160
    else:  # one process stops reading at the cap; two read their whole shards before the merge applies it
        assert summary["kept"] == summary_two["kept"] == cap


def test_dp2_rpt_stage_runs_and_logs_the_whole_batch(single):
    """Under DP=2 each rank samples its own half of the prompts (rank-seeded, so not comparable sample by sample
    with one process); the logged statistics cover both halves: 4 prompts x G=4 responses per step."""
    if not (single / "done" / "select.json").exists():
        _cli(single.parent, 1, "select", "run.name=single")
    run = _copy_run(single, "rpt_dp2", "rpt.json")
    _cli(single.parent, 2, "rpt", "run.name=rpt_dp2", "algo.entropy_coef=0.01")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rpt_rows = [r for r in rows if r["stage"] == "rpt"]
    assert [r["step"] for r in rpt_rows] == [1, 2, 3]
    for r in rpt_rows:
        assert r["update_applied"] == 1.0 and r["loss"] < 0  # the entropy bonus alone: loss = -0.01 * entropy
        assert r["loss"] == pytest.approx(-0.01 * r["entropy"], rel=1e-3)  # global loss, not one rank's part
    assert (run / "checkpoints" / "rpt" / "latest").exists()
