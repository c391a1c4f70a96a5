"""The ``lm_eval`` section of the config schema: zero-shot benchmarks of a run's checkpoints with
lm-evaluation-harness (stage ``lm_eval``, ``rpt/stages/lm_eval.py``).

Split from ``rpt/config.py`` (which composes it into the root config) to keep each file readable; the rules are
the same: typed fields with one-line docs, validation in ``__post_init__``. Which tasks exist and whether their
data files do is checked when the stage is asked for, before any model loads (``rpt/eval/harness_tasks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODELS = ("auto", "hf", "vllm")  # lm_eval.model


@dataclass
class LMEvalConfig:
    tasks: list[str] = field(default_factory=list)  # lm-eval task, group or tag names: its registry (mmlu_pro,
    # gsm8k, ...), the tasks rpt ships (rpt/eval/lm_eval_tasks/: supergpqa) or the YAMLs under include_path
    include_path: str | None = None  # a directory of your own task YAMLs (local data: `dataset_path: json` with
    # `dataset_kwargs.data_files`)
    data_files: dict[str, str] = field(default_factory=dict)  # task -> a local file (or glob) that becomes its test
    # split, e.g. +lm_eval.data_files.supergpqa=/data/SuperGPQA/SuperGPQA-all.jsonl
    checkpoints: list[str] | None = None  # which checkpoints (hf, base, rpt, cnt, sft, rl_<from>); null: every one
    # the run has finished
    num_fewshot: int = 0  # in-context examples (0: zero-shot, as the RPT paper reports)
    limit: int | None = None  # items per task (null: all); a quick look, not a number to report
    max_gen_toks: int | None = None  # generation budget of generative tasks, reasoning included (null: the run's
    # eval.max_new_tokens); replaces each task's own
    apply_chat_template: bool | None = None  # prompts through the tokenizer's chat template (null: as
    # rollout.chat_template)
    think_end_token: str | None = None  # the answer is read after the last one (lm-eval's think_end_token; null:
    # rollout.think_close under rollout.answer_format=think, none under boxed; "" none)
    system_instruction: str | None = None  # a system turn before every prompt (null: none)
    model: str = "auto"  # lm-eval's model: hf (transformers) | vllm | auto (vllm where it is installed and CUDA is
    # present, else hf)
    batch_size: int = 8  # requests per forward (hf; vllm batches itself)
    model_args: dict[str, Any] = field(default_factory=dict)  # more arguments for lm-eval's model, e.g.
    # +lm_eval.model_args.gpu_memory_utilization=0.8 (vllm), +lm_eval.model_args.max_length=32768
    bootstrap_iters: int = 100000  # lm-eval's bootstrap draws for a metric without a closed-form standard error
    log_samples: bool = True  # every item's prompt, response(s), target and score to
    # eval/lm_eval_samples/<checkpoint>/<task>.jsonl

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"lm_eval.model must be one of {list(MODELS)}, got {self.model!r}")
        if self.num_fewshot < 0 or self.batch_size < 1 or self.bootstrap_iters < 0:
            raise ValueError(f"lm_eval.num_fewshot and lm_eval.bootstrap_iters must be >= 0 and lm_eval.batch_size "
                             f">= 1, got {self.num_fewshot}, {self.bootstrap_iters} and {self.batch_size}")
        for name in ("limit", "max_gen_toks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"lm_eval.{name} must be >= 1 or null, got {value}")
