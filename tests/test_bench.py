"""`rpt bench` runs every part at tiny shapes and emits JSON with each figure and its peer (no timing asserts)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

README_LINES = ("rpt bench model=tiny bench.batch_size=16",)  # the README's benchmark line (tests/test_readme.py)


def test_bench_emits_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    # the README's line with smaller sizes after it (a later value of a key wins)
    proc = subprocess.run([sys.executable, "-m", "rpt.cli", *README_LINES[0].split()[1:], "model=smoke",
                           "model.num_attention_heads=1", "model.num_query_groups=1",  # head size 32: vLLM takes it
                           "bench.batch_size=2", "bench.prompt_len=8", "bench.new_tokens=4", "bench.train_seq_len=16",
                           "bench.repeats=2",
                           "rpt.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
                           "logging=disabled", f"bench.out={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result  # stdout is exactly the JSON: logs and peer chatter go to stderr
    for key in ("prefill_tok_s", "decode_tok_s", "hf_decode_tok_s", "decode_speedup_vs_hf"):
        assert result["rollout"][key] > 0, key
    ragged = result["rollout_ragged"]
    assert ragged["prompt_lens"] == [2, 16]
    for key in ("generate_s", "megatron_generate_s", "hf_generate_s", "speedup_vs_hf", "speedup_vs_megatron_path"):
        assert ragged[key] > 0, key
    for key in ("train_tok_s", "hf_train_tok_s", "train_speedup_vs_hf"):
        assert result["train"][key] > 0, key
    assert result["scoring"]["scoring_tok_s"] > 0 and result["scoring"]["plain_forward_tok_s"] > 0
    for part in ("rollout", "rollout_ragged", "train", "scoring", "scoring_processes", "trl_grpo_step"):
        assert result[part]["peak_memory_mib"] > 0, part  # the high-water mark after each part
    procs = result["scoring_processes"]
    assert procs["scoring_tok_s_1proc"] > 0 and procs["scoring_tok_s_2proc"] > 0 and procs["speedup_2proc_vs_1"] > 0
    assert result["rollout"]["engine"] == "LeanDecoder" and result["rollout"]["megatron_decode_tok_s"] > 0
    step = result["rpt_step"]
    assert {"generate", "reward", "advantages", "update", "policy_metrics"} <= set(step["rpt_step_phases_s"])
    assert 0 < step["rpt_step_accounted_share"] <= 1 and step["rpt_step_tokens_per_s"] > 0
    assert step["rpt_step_spread_s"][0] <= step["rpt_step_s"] <= step["rpt_step_spread_s"][1]
    assert result["trl_grpo_step"]["trl_grpo_step_s"] > 0 and step["rpt_step_speedup_vs_trl"] > 0
    low, high = step["rpt_step_speedup_vs_trl_spread"]
    assert low <= step["rpt_step_speedup_vs_trl"] <= high
    # paired: after TRL's warm-up step, each timed TRL step is followed by one step of ours, then TRL's next one
    trl = result["trl_grpo_step"]
    trl_started, ours_started = trl["trl_grpo_step_started_s"], step["rpt_step_started_s"]
    assert step["paired_with_trl"] and len(ours_started) == len(trl_started) == 2
    assert trl_started[0] + trl["trl_grpo_step_times_s"][0] <= ours_started[0]
    assert ours_started[0] + step["rpt_step_times_s"][0] <= trl_started[1]
    assert trl_started[1] + trl["trl_grpo_step_times_s"][1] <= ours_started[1]
    assert step["rpt_step_speedup_vs_trl_pairs"] == [t / o for t, o in zip(trl["trl_grpo_step_times_s"],
                                                                          step["rpt_step_times_s"], strict=True)]
    for part in ("rollout", "rollout_ragged"):  # vLLM beside the lean decoder and HF, in the same run
        assert result[part]["vllm_generate_s"] > 0 and result[part]["generate_speedup_vs_vllm"] > 0, part
        low, high = result[part]["generate_speedup_vs_vllm_spread"]
        assert low <= result[part]["generate_speedup_vs_vllm"] <= high
    for part in ("rollout", "rollout_ragged", "train", "scoring"):  # every timed figure with its spread
        assert all(lo <= hi for lo, hi in result[part]["spread_s"].values()), part



def test_rpt_step_runs_back_to_back_when_trl_is_missing(runtime, monkeypatch):
    """Without TRL (an optional dependency) the paired part still times ``bench.repeats`` steps of ours, says they
    were not paired, and claims no ratio."""
    from rpt.bench import run as bench_run
    from tests.helpers import rl_cfg

    cfg = rl_cfg(["bench.repeats=2", "bench.prompt_len=8", "model=smoke", "rollout.max_new_tokens=4",
                  "rpt.prompts_per_step=2", "rollout.group_size=2", "bench.vocab_size=64"])
    monkeypatch.setattr(bench_run, "bench_trl_grpo_step", lambda *a, **k: {"trl_skipped": "trl not installed"})
    out = bench_run._trl_step(None, cfg, runtime, 64, cfg.bench)
    step = out["rpt_step"]
    assert out["trl_grpo_step"] == {"trl_skipped": "trl not installed"} and step["paired_with_trl"] is False
    assert len(step["rpt_step_times_s"]) == 2 and step["rpt_step_started_s"] == sorted(step["rpt_step_started_s"])


def test_timed_alternating_takes_turns():
    """Each round runs every function once, in turn, after one warm-up call each; each gets one time per round."""
    from rpt.bench.timing import timed_alternating

    calls = []
    timings = timed_alternating({"ours": lambda: calls.append("ours"), "peer": lambda: calls.append("peer")}, 3)
    assert calls == ["ours", "peer"] * 4
    assert [len(t.times) for t in timings.values()] == [3, 3] and all(x >= 0 for t in timings.values() for x in t.times)
