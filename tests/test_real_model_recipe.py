"""The real-model recipes (``experiment=rpt_qwen2_5_1_5b``, ``rpt_r1_distill_1_5b``, ``paper_14b``): they carry the
paper's settings and none of the CPU demo's; the paper's v0 prompt word for word; dynamic sampling from the step the
paper starts it; a stage whose rollouts state no answer says so in the log, its summary and the report; `rl` refuses
a start the run does not have. And the acceptance test: the README's real-model lines, run through the CLI on tiny
random Qwen2 and Llama checkpoints made here (``tests/hf_fixtures.py``), to a report that shows the imported base (and
warns, first thing, that a random model states no answers) and an export that ``transformers`` loads as the right
architecture and dtype (its logits: the original's when RPT had no reward to learn from, as a random model has).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rpt import config as schema
from rpt.rundir import RunDir
from rpt.tasks.base import Task
from rpt.train.no_answer import NoAnswerWatch
from tests.helpers import compose_config

schema.register()
ROOT = Path(__file__).resolve().parent.parent

# The README's "Starting from a real model" lines (README.md must show them: test_the_readme_shows_these_lines).
README_LINES = {
    "rpt_qwen2_5_1_5b": [
        "rpt hf_import experiment=rpt_qwen2_5_1_5b run.name=q15 hf.path=/models/Qwen2.5-1.5B",
        "rpt pipeline run.name=q15 data.source=/data/omnimath.jsonl",
        "rpt hf_export run.name=q15 hf.source=rpt hf.export_dir=/models/q15-rpt",
    ],
    "rpt_r1_distill_1_5b": [
        "rpt hf_import experiment=rpt_r1_distill_1_5b run.name=r1 hf.path=/models/DeepSeek-R1-Distill-Qwen-1.5B",
        "rpt pipeline run.name=r1 data.source=/data/omnimath.jsonl",
        "rpt hf_export run.name=r1 hf.source=rpt hf.export_dir=/models/r1-rpt",
    ],
}
PRESETS = ("rpt_qwen2_5_1_5b", "rpt_r1_distill_1_5b", "paper_14b")
# the paper's v0 template (arXiv 2506.08007, appendix table "Seven prompt templates"), as printed there
PAPER_V0 = ("Complete the given text under ‘### Context’ by predicting the next token, and wrap it in ‘\\boxed{}’. "
            "Please reason step by step to find the most probable next token as the final answer, and enclose it in "
            "\\boxed{} (note: the token may begin with a space, e.g., \\boxed{ para} or \\boxed{ =}; do not use "
            "\\text{}).")


def _cfg(*overrides):
    return schema.load(compose_config(*overrides))


# ---- presets ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_presets_carry_the_papers_settings_and_start_from_the_import(preset):
    cfg = _cfg(f"experiment={preset}", "stage=pipeline")
    demo = _cfg("stage=pipeline")
    assert "pretrain" not in cfg.stages and cfg.stages[0] == "prep" and cfg.stages[-2:] == ["eval", "report"]
    assert cfg.select.proxy == "hf" and cfg.rpt.init_from == "hf" and "pretrain" not in cfg.rl_task.train_on
    assert cfg.data.rpt_fraction == 1.0  # nothing to pretrain: every document is for RPT
    loop = cfg.rpt
    assert (loop.lr, loop.min_lr, loop.warmup_steps, loop.weight_decay, loop.steps) == (1e-6, 1e-6, 0, 0.01, 1000)
    assert loop.prompts_per_step == 256 and loop.updates_per_rollout() == 1
    assert (cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.max_new_tokens) == (8, 0.8, 8192)
    assert cfg.select.max_context_tokens <= 4096 and cfg.data.seq_length == 4096
    assert cfg.algo.kl_coef == 0 and cfg.algo.entropy_coef == 0
    assert cfg.algo.dynamic_sampling and cfg.algo.dynamic_sampling_from_step == 500
    assert cfg.rollout.template in ("v0", "v0_think") and cfg.rollout.chat_template == (cfg.rollout.template == "v0")
    # nothing only the CPU demo wants: its strategic grams, its arithmetic prompt, its learning rates
    assert cfg.analysis.strategic_grams != demo.analysis.strategic_grams
    assert "{question}" in cfg.rl_task.template and cfg.rl_task.template != demo.rl_task.template
    assert cfg.rl.lr == 1e-6 != demo.rl.lr
    assert cfg.model.name != demo.model.name


def test_paper_14b_imports_the_14b_instead_of_pretraining_it():
    cfg = _cfg("experiment=paper_14b", "stage=pipeline")
    assert cfg.model.num_layers == 48 and cfg.run.tensor_parallel == 8 and cfg.rollout.template == "v0"
    assert "pretrain" not in cfg.stages


def test_data_jsonl_no_longer_defaults_to_the_demo_corpus():
    assert _cfg("data=jsonl", "stage=prep").data.source == ""


def test_the_readme_shows_these_lines():
    readme = (ROOT / "README.md").read_text()
    missing = [line for lines in README_LINES.values() for line in lines if line not in readme]
    assert not missing, f"README.md's 'Starting from a real model' section should show: {missing}"


# ---- the paper's prompt ---------------------------------------------------------------------------------------

def test_v0_is_the_papers_prompt_word_for_word(tokenizer):
    from rpt.tasks.base import render_prompt

    cfg = _cfg("stage=rpt")
    v0 = cfg.rollout.templates["v0"]
    context = tokenizer.encode("1 + 2 = 3")
    text = tokenizer.decode(render_prompt(tokenizer, v0, context))
    assert text.startswith(PAPER_V0) and "\\boxed{ para}" in text and text.endswith("### Context\n1 + 2 = 3")
    think = tokenizer.decode(render_prompt(tokenizer, cfg.rollout.templates["v0_think"], context))
    assert think == text + "<think>\n"



def test_the_r1_recipe_prompts_rpt_eval_and_cnt_through_the_chat_template(tmp_path):
    """R1-Distill's recipe renders template v0 as the user turn of the model's chat template: the prompt ids each
    stage builds (``NextTokenTask.from_rollout``, the one constructor the stages use) equal what `transformers`'
    ``apply_chat_template`` makes of the same text, so training, evaluation and the baseline see one prompt."""
    transformers = pytest.importorskip("transformers")
    from rpt.tasks.next_token import NextTokenTask
    from rpt.tokenizer import HFTokenizer
    from tests.hf_fixtures import make_hf_checkpoint

    ckpt = make_hf_checkpoint(tmp_path / "hf_model", "llama", "r1")
    ours = HFTokenizer(ckpt.path / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(ckpt.path)
    text = "The next token may begin with a space. 4 + 7 = 11"
    items = [{"context": ours.encode(text), "target": ours.encode(" so"), "entropy": 1.0}]
    cfg = _cfg("experiment=rpt_r1_distill_1_5b")
    assert cfg.rollout.template == "v0" and cfg.rollout.chat_template
    user_turn = cfg.rollout.templates["v0"].replace("{{", "{").replace("}}", "}").replace("{context}", text)
    expected = theirs.apply_chat_template([{"role": "user", "content": user_turn}], add_generation_prompt=True,
                                          tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert NextTokenTask.from_rollout(items, ours, cfg.rollout).prompt_ids(items[0]) == list(expected)
    assert theirs.decode(expected).endswith("<｜Assistant｜><think>\n")  # the chat frame is really there
    for stage in ("rpt", "eval", "cnt"):  # no stage builds the task any other way
        source = (Path(__file__).resolve().parent.parent / "rpt" / "stages" / f"{stage}.py").read_text()
        assert "NextTokenTask.from_rollout(" in source and "NextTokenTask(" not in source, stage


# ---- dynamic sampling from a step -----------------------------------------------------------------------------

class HalfConstantTask(Task):
    """Prompt "0 = " always earns 0 (every group of it is all-equal); the others earn their digit share (varies)."""

    def __init__(self, tokenizer):
        super().__init__(["0 = ", "1 + 2 = ", "3 + 4 = ", "5 + 6 = "], tokenizer)

    def reference(self, item):
        return item

    def prompt_ids(self, item):
        return self.tokenizer.encode(item)

    def reward(self, item, response_text):
        return 0.0 if item == "0 = " else sum(c.isdigit() for c in response_text) / max(1, len(response_text))


def test_dynamic_sampling_acts_from_its_step(runtime, tokenizer):
    """With algo.dynamic_sampling_from_step=1 the same prompts keep their all-equal group at step 0 and lose it at
    step 1; without the option both steps drop it."""
    from rpt.stages.rl_training import make_setup
    from rpt.train.optim import build_trainable
    from rpt.train.rl_loop import collect

    def kept(from_step, step):
        cfg = _cfg("experiment=smoke", "stage=rpt", "rollout.stop_at_answer=false", "rollout.max_new_tokens=8",
                   "rpt.prompts_per_step=4", "algo.dynamic_sampling=true", "algo.max_refills=0",
                   f"algo.dynamic_sampling_from_step={from_step}")
        torch.manual_seed(0)
        trainable = build_trainable(cfg.model, tokenizer.vocab_size, runtime, cfg.rpt, cfg.rpt.steps)
        got = collect(make_setup(cfg, runtime, trainable, HalfConstantTask(tokenizer), cfg.rpt), step, 0)
        assert got.stats["all_equal_share"] > 0
        return got.items

    assert "0 = " in kept(from_step=1, step=0)  # before the step: every group is kept
    assert "0 = " not in kept(from_step=1, step=1)  # from it on: the all-equal group is dropped
    assert "0 = " not in kept(from_step=0, step=0)


# ---- no parseable answer -------------------------------------------------------------------------------------

def _rollout_cfg(share=0.95, steps=3):
    return _cfg("stage=rpt", f"rollout.no_answer_warn_share={share}", f"rollout.no_answer_warn_steps={steps}").rollout


def test_no_answer_watch_warns_once_over_a_full_window(caplog):
    watch = NoAnswerWatch("rpt", _rollout_cfg(), total_steps=10)
    with caplog.at_level(logging.WARNING, logger="rpt.train.no_answer"):
        for share in (1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0):  # the window of 3 reaches 0.95 only at the 6th step
            watch.observe(share)
            assert (watch.warning is not None) == (len(caplog.records) == 1)
    assert len(caplog.records) == 1 and "rpt: 100% of rollouts over the last 3 step(s)" in caplog.text
    assert watch.summary() == {"no_answer_share_last": 1.0, "no_answer_warning": watch.warning}


def test_no_answer_watch_stays_quiet_when_answers_come(caplog):
    short = NoAnswerWatch("rl_hf", _rollout_cfg(steps=10), total_steps=2)  # shorter than the window: whole stage
    quiet = NoAnswerWatch("rpt", _rollout_cfg(share=0.99), total_steps=10)
    for share in (1.0, 0.97, 0.97):
        quiet.observe(share)
    short.observe(1.0)
    assert short.warning is None
    short.observe(1.0)
    assert "rl_hf" in short.warning and quiet.warning is None


def test_the_report_opens_with_the_training_warnings(tmp_path):
    from rpt.analysis.report_md import training_warnings, warnings_section

    rd = RunDir(tmp_path, "run")
    assert warnings_section(rd) == ""
    rd.mark_done("rpt", {"steps": 3, "no_answer_warning": "rpt: no answers", "no_answer_share_last": 1.0})
    rd.mark_done("rl", {"hf": {"no_answer_warning": None}, "rpt": {"no_answer_warning": "rl_rpt: no answers"}})
    assert training_warnings(rd) == ["rpt: no answers", "rl_rpt: no answers"]
    assert warnings_section(rd).startswith("## ⚠ Warnings")


# ---- which checkpoints rl starts from -------------------------------------------------------------------------

def test_rl_refuses_a_start_the_run_does_not_have(tmp_path):
    from rpt.stages.rl import check_starts

    rd = RunDir(tmp_path, "run")
    (rd.checkpoints("hf") / "step_000000").mkdir(parents=True)
    (rd.checkpoints("hf") / "step_000000" / "state.pt").write_bytes(b"")
    (rd.checkpoints("hf") / "latest").write_text("step_000000")
    check_starts(["hf"], rd)
    with pytest.raises(FileNotFoundError, match=r"no finished checkpoint for \['pretrain'\]; it has \['hf'\]"):
        check_starts(["pretrain", "hf"], rd)


def test_prep_refuses_to_train_a_tokenizer_for_an_imported_model(tmp_path):
    from rpt.stages.prep import _check_import

    cfg = _cfg("experiment=rpt_qwen2_5_1_5b", "stage=prep", "data.source=x.jsonl")
    rd = RunDir(tmp_path, "q15")
    with pytest.raises(ValueError, match="run `rpt hf_import run.name=q15"):
        _check_import(cfg, rd)
    rd.tokenizer.mkdir(parents=True)
    (rd.tokenizer / "tokenizer.json").write_text("{}")
    _check_import(cfg, rd)


# ---- acceptance: the README's lines on tiny real checkpoints --------------------------------------------------

SIZES = [  # the paper's sizes scaled down to seconds on a CPU; everything else is the preset's
    "data.seq_length=64", "select.max_context_tokens=24", "select.max_target_tokens=8", "select.max_per_doc=3",
    "select.batch_size=8", "rollout.group_size=4", "rollout.max_new_tokens=6", "algo.dynamic_sampling_from_step=1",
    "algo.max_refills=1", "rpt.steps=2", "rpt.prompts_per_step=4", "rpt.ppo_mini_batch_size=4",
    "rpt.micro_batch_size=16", "rpt.checkpoint_every=2", "rpt.eval_every=0", "rl.steps=1", "rl.prompts_per_step=4",
    "rl.micro_batch_size=16", "rl.checkpoint_every=1", "rl_task.train_size=8", "rl_task.test_size=4",
    "eval.max_positions=6", "eval.samples=2", "eval.max_new_tokens=6", "eval.concentration_prompts=2",
    "analysis.overlap_every=0", "analysis.diversity_every=0", "logging.wandb_mode=disabled", "logging.progress=false",
    "logging.sample_every=1",
]


def _corpus(path: Path) -> Path:
    """OmniMATH-shaped records (problem, solution), one of them not valid Unicode (an escaped lone surrogate)."""
    rows = [{"problem": f"Compute {a} + {b} * {a}.", "solution": f"First {b} * {a} = {b * a}, then {a} + {b * a} = "
             f"{a + b * a}. So the answer is {a + b * a}.", "domain": "arithmetic"}
            for a in range(1, 9) for b in range(2, 7)]
    rows.insert(5, {"problem": "A broken record \ud800 here.", "solution": "None."})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _substitute(line: str, paths: dict[str, Path]) -> list[str]:
    """A README line as argv: `rpt` → this interpreter's CLI, the placeholder paths → this test's."""
    args = line.split()
    assert args[0] == "rpt"
    out = [sys.executable, "-m", "rpt.cli"]
    for arg in args[1:]:
        key = arg.split("=", 1)[0]
        out.append(f"{key}={paths[key]}" if key in paths else arg)
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("preset,arch,style", [("rpt_qwen2_5_1_5b", "qwen2", "qwen_base"),
                                               ("rpt_r1_distill_1_5b", "llama", "r1")])
def test_the_readme_real_model_lines_run_to_a_report_and_an_export(preset, arch, style, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tests.hf_fixtures import make_hf_checkpoint, model_overrides

    ckpt = make_hf_checkpoint(tmp_path / "hf_model", arch, style)
    paths = {"hf.path": ckpt.path, "data.source": _corpus(tmp_path / "omnimath.jsonl"),
             "hf.export_dir": tmp_path / "exported"}
    # sizes appended: the run's root, the tiny checkpoint's shape and the scaled-down lengths and counts (the run
    # remembers its preset from the first line; the same values given again are no change)
    extra = [f"run.root={tmp_path / 'runs'}", *model_overrides(ckpt.path), *SIZES]
    for line in README_LINES[preset]:
        cmd = _substitute(line, paths) + extra
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-4000:]}"
    run_name = re.search(r"run\.name=(\S+)", README_LINES[preset][0]).group(1)
    run = tmp_path / "runs" / run_name

    ingest = json.loads((run / "data" / "ingest_summary.json").read_text())
    assert ingest["skipped"] == {"not_utf8": 1} and ingest["kept"] == 40
    prompts = [json.loads(line)["context"] for path in sorted((run / "rollouts" / "rpt").glob("step_*.jsonl"))
               for line in path.open()]  # (dynamic sampling may leave a step with no kept rollout)
    # the prompts rpt trained on open the reasoning: Qwen's template v0_think writes <think>; R1-Distill's is v0, which
    # ends with the context, inside its chat template, whose generation prompt opens <think>
    assert prompts and all(p.endswith("<think>\n") for p in prompts)
    next_token = json.loads((run / "eval" / "next_token.json").read_text())["results"]
    assert {"hf", "rpt"} <= set(next_token) and "base" not in next_token
    assert {"direct", "reasoning_greedy"} <= set(next_token["hf"])
    downstream = json.loads((run / "eval" / "downstream.json").read_text())["results"]
    assert {"hf", "rpt", "rl_hf", "rl_rpt"} <= set(downstream)
    report = (run / "report" / "report.md").read_text()
    assert "| hf | direct |" in report and "imported base" in report
    # a random tiny model writes no `</think> \boxed{}`: the report says so first thing
    assert report.index("## ⚠ Warnings") < report.index("## Position selection")
    assert json.loads((run / "done" / "rpt.json").read_text())["no_answer_warning"]

    exported = transformers.AutoModelForCausalLM.from_pretrained(paths["hf.export_dir"])
    assert type(exported).__name__ == ("LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM")
    assert exported.config.vocab_size == ckpt.vocab_size
    assert exported.dtype == torch.float32  # the run's dtype on CPU
    tokens = torch.randint(0, ckpt.tokenizer_vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after, before = exported(tokens).logits, ckpt.model(tokens).logits
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if not any(r.get("update_applied") for r in rows if r["stage"] == "rpt"):
        # no reward anywhere, so no update: import → rpt checkpoint → export gives back the very same model
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    else:
        assert not torch.equal(after, before)
