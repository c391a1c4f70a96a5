"""Stage `lm_eval`: zero-shot benchmarks of every finished checkpoint of the run with lm-evaluation-harness, the way
the RPT paper reports MMLU-Pro and SuperGPQA: each checkpoint's HF export (made here when it is missing or older
than the checkpoint, as `hf_export` makes it) through ``lm_eval.simple_evaluate``, in the run's answer format
(``rpt/eval/harness_run.py``), on tasks from lm-eval's registry or local task YAMLs (``rpt/eval/harness_tasks.py``).

Never run by a plain ``rpt pipeline``; ``stages=[..., eval, lm_eval, report]`` adds it. Writes ``eval/lm_eval.json``
(per checkpoint, per task: items and every metric with its standard error; the settings; lm-eval's version),
``eval/lm_eval_samples/<checkpoint>/<task>.jsonl``, ``report/lm_eval.md``, and ``report/report.md`` again when the
run's report is already written; the headline metrics go to the W&B summary. A killed evaluation resumes: the
checkpoints whose results the file already holds, made with the same settings and tasks from the same checkpoint,
are not evaluated again.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch

from rpt import checkpoint
from rpt.analysis.lm_eval_md import lm_eval_section
from rpt.errors import MissingInput, Refusal
from rpt.eval.harness_run import HarnessSettings, evaluate_export
from rpt.eval.harness_tasks import lm_eval_version, resolve_tasks
from rpt.rundir import read_json, write_json, write_text
from rpt.stages.hf_export import export_checkpoint
from rpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# (label, checkpoint, the stage that finishes it): the labels of `eval`
CHECKPOINTS = (("hf", "hf", "hf_import"), ("base", "pretrain", "pretrain"), ("rpt", "rpt", "rpt"),
               ("rlp", "rlp", "rlp"), ("cnt", "cnt", "cnt"), ("sft", "sft", "sft"))
MARKER = "rpt_export.json"  # in an export made by lm_eval: the checkpoint it holds


def finished_checkpoints(cfg, rd) -> dict[str, str]:
    """``{label: checkpoint}`` of every checkpoint of the run whose stage finished (an import needs no marker)."""
    found = {label: source for label, source, stage in CHECKPOINTS
             if (rd.is_done(stage) or source == "hf") and checkpoint.latest_step_dir(rd.checkpoints(source))}
    found |= {f"rl_{s}": f"rl_{s}" for s in cfg.rl_task.train_on
              if rd.is_done("rl") and checkpoint.latest_step_dir(rd.checkpoints(f"rl_{s}"))}
    return found


def chosen_checkpoints(cfg, rd) -> dict[str, str]:
    """The checkpoints ``lm_eval.checkpoints`` names (every finished one when null), or a refusal naming those the
    run does not have."""
    found = finished_checkpoints(cfg, rd)
    asked = cfg.lm_eval.checkpoints
    if asked is None:
        if not found:
            raise MissingInput(f"no finished checkpoint in {rd.path} to evaluate: run `rpt pipeline` (or "
                               f"`rpt hf_import`) first")
        return found
    missing = [c for c in asked if c not in found]
    if missing:
        raise MissingInput(f"lm_eval.checkpoints: no finished {', '.join(missing)} checkpoint in {rd.path}; it has "
                           f"{', '.join(found) or 'none'}")
    return {c: found[c] for c in asked}


def checkpoint_record(rd, source: str) -> dict:
    """Which checkpoint a result or an export was made from: its directory and when it was written."""
    step_dir = checkpoint.latest_step_dir(rd.checkpoints(source))
    return {"source": source, "dir": str(step_dir.resolve()), "mtime": step_dir.stat().st_mtime}


def export_of(ctx, source: str) -> Path:
    """The HF export of ``source``'s latest checkpoint under ``<run>/hf/<source>``, made unless it is there."""
    out = ctx.rd.path / "hf" / source
    record = checkpoint_record(ctx.rd, source)
    if (out / MARKER).exists() and read_json(out / MARKER) == record:
        return out
    log.info("lm_eval: exporting %s to %s", source, out)
    export_checkpoint(ctx, source, out)
    write_json(out / MARKER, record)
    gc.collect()  # the megatron model is gone before lm-eval loads the export
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def earlier_results(path: Path, header: dict) -> dict:
    """What an interrupted call already evaluated with these settings and tasks (``{label: entry}``)."""
    if not path.exists():
        return {}
    old = read_json(path)
    if any(old.get(k) != v for k, v in header.items()):
        return {}
    return {label: {"checkpoint": old["checkpoints"][label], "results": rows}
            for label, rows in old["results"].items()}


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    if rt.world_size > 1:
        raise Refusal("rpt lm_eval runs in one process (lm-eval batches on its own): start it without torchrun")
    tasks = resolve_tasks(cfg.lm_eval.tasks, cfg.lm_eval.include_path, cfg.lm_eval.data_files)  # before any model
    settings = HarnessSettings.of(cfg.lm_eval, cfg.rollout, cfg.eval.max_new_tokens, cfg.run.seed, rt.device.type)
    if settings.apply_chat_template and Tokenizer.from_run(rd).chat_template is None:
        raise Refusal(f"lm_eval.apply_chat_template (or rollout.chat_template) is true, but the run's tokenizer "
                      f"({rd.tokenizer}) has no chat template: set lm_eval.apply_chat_template=false")
    chosen = chosen_checkpoints(cfg, rd)
    header = {"lm_eval_version": lm_eval_version(), "tasks": list(tasks.names), "settings": settings.record()}
    path = rd.eval / "lm_eval.json"
    done = earlier_results(path, header)
    results, records = {}, {}
    for label, source in chosen.items():
        records[label] = checkpoint_record(rd, source)
        if label in done and done[label]["checkpoint"] == records[label]:
            results[label] = done[label]["results"]
            log.info("lm_eval %s: results kept from an earlier call", label)
        else:
            export = export_of(ctx, source)
            results[label] = evaluate_export(export, tasks, settings, rd.eval / "lm_eval_samples" / label)
            log.info("lm_eval %s: %s", label, {t: r["metrics"] for t, r in results[label].items()})
        write_json(path, {**header, "checkpoints": records, "results": results})  # after each: a resume keeps it
    write_text(rd.report / "lm_eval.md", lm_eval_section(rd.path))
    if rd.is_done("report") and not cfg.report.runs:  # the run's report gains the table now
        from rpt.analysis.report_md import build_report

        build_report(cfg, rd)
    wandb_log = ctx.metrics()
    wandb_log.summary({f"{label}/{task}/{key}{part}": m[field]
                       for label, rows in results.items() for task, row in rows.items()
                       for key, m in row["metrics"].items()
                       for field, part in (("value", ""), ("stderr", "_stderr")) if m[field] is not None})
    wandb_log.close()
    return {"checkpoints": list(chosen), "tasks": list(tasks.names), "results": str(path)}
