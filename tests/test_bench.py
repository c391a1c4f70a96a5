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
                           "bench.batch_size=2", "bench.prompt_len=8", "bench.new_tokens=4", "bench.train_seq_len=16",
                           "bench.repeats=1",
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
    procs = result["scoring_processes"]
    assert procs["scoring_tok_s_1proc"] > 0 and procs["scoring_tok_s_2proc"] > 0 and procs["speedup_2proc_vs_1"] > 0
    assert result["rollout"]["engine"] == "LeanDecoder" and result["rollout"]["megatron_decode_tok_s"] > 0
    assert {"rpt_step_rollout_s", "rpt_step_update_s", "rpt_step_tokens_per_s"} <= set(result["rpt_step"])
    assert result["trl_grpo_step"]["trl_grpo_step_s"] > 0 and result["rpt_step"]["rpt_step_speedup_vs_trl"] > 0


def test_memory_part_compares_chunked_and_full_logits_in_fresh_processes(runtime):
    """The memory part at tiny shapes: every figure present, the table covers every response length, and the
    chunked path (3 tokens per chunk, so several chunks) gives the full-logits numbers."""
    from types import SimpleNamespace

    from rpt.bench.memory import bench_memory
    from rpt.config import BenchConfig, TrainLoopConfig

    bench = BenchConfig(memory_vocab_size=300, memory_context=8, memory_response=6, memory_group_size=2,
                        memory_lengths=[4, 6], memory_scoring_windows=2)
    out = bench_memory(SimpleNamespace(bench=bench, rpt=TrainLoopConfig(logits_chunk_tokens=3)), runtime)
    step, scoring = out["rpt_step"], out["scoring"]
    for part in (step, scoring):
        assert part["before_peak_mb"] > 0 and part["after_peak_mb"] > 0 and part["peak_ratio"] > 0
    assert step["max_abs_logp_diff"] < 1e-4 and step["max_abs_entropy_diff"] < 1e-4
    assert scoring["max_abs_entropy_diff"] < 1e-4
    assert step["grad_norm_after"] == pytest.approx(step["grad_norm_before"], rel=1e-4)
    assert [row["response"] for row in out["by_response_length"]] == [4, 6]
    assert all(row["before_peak_mb"] > 0 for row in out["by_response_length"])
