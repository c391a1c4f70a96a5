"""``force=true``: start stages over. Their outputs (checkpoints, cached shards, eval files, metrics rows, done
markers) move aside to ``superseded/<time>/`` under the run, never deleted, and every stage that consumes them goes
stale: its outputs move aside as well, so `rpt pipeline` redoes it from the start instead of skipping it or resuming
from checkpoints made from the old inputs. What a stage consumes follows the checkpoints it starts from in this
run's config (``inputs_of``: ``sft.init_from=hf`` does not read ``rpt``; ``rpt.init_from=sft`` does read ``sft``),
so forcing ``rpt`` after an SFT from the import leaves that SFT alone; the static ``INPUTS`` (every source a stage
can be configured to start from) is the fallback without a config. ``cnt`` is matched to ``rpt`` (its step count or
its compute), so it goes stale with it.

A forced call can be interrupted (a preemption) and re-run as is (a requeue): ``force_pending.json`` remembers the
forced stages and the call's overrides until a call finishes, and the same command again resumes the restarted
stage instead of starting it over a second time. Only rank 0 moves files; the CLI puts barriers around it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import time
from pathlib import Path

from rpt.rundir import RunDir, read_json, write_json, write_text

log = logging.getLogger(__name__)

# stage -> the stages whose outputs it may read (conservative: every source it can be configured to start from)
INPUTS: dict[str, tuple[str, ...]] = {
    "hf_import": (),
    "prep": ("hf_import",),  # keeps an imported tokenizer
    "pretrain": ("prep",),
    "proxy": ("prep",),
    "select": ("prep", "pretrain", "proxy", "hf_import"),
    "rpt": ("prep", "select", "pretrain", "hf_import", "sft"),
    "rlp": ("prep", "select", "pretrain", "hf_import", "sft"),
    "cnt": ("prep", "select", "pretrain", "hf_import", "rpt"),  # matched to rpt's steps or compute
    "rl": ("prep", "pretrain", "rpt", "rlp", "cnt", "hf_import"),
    "sft": ("prep", "pretrain", "rpt", "rlp", "cnt", "hf_import"),
    "eval": ("prep", "select", "pretrain", "rpt", "rlp", "cnt", "rl", "sft", "hf_import"),
    "lm_eval": ("pretrain", "rpt", "rlp", "cnt", "rl", "sft", "hf_import"),
    "report": ("prep", "pretrain", "select", "rpt", "rlp", "cnt", "rl", "sft", "eval", "hf_import"),
    "hf_export": ("pretrain", "rpt", "rlp", "cnt", "rl", "sft", "hf_import"),
}
# stage -> its metrics.jsonl "stage" names and checkpoints/ + rollouts/ folders (patterns)
LOOP_NAMES = {"pretrain": "pretrain", "proxy": "proxy", "rpt": "rpt", "rlp": "rlp", "cnt": "cnt", "rl": "rl_*",
              "sft": "sft", "hf_import": "hf"}
PENDING = "force_pending.json"
LM_EVAL_OUTPUTS = ("eval/lm_eval.json", "eval/lm_eval_samples", "report/lm_eval.md")  # stage lm_eval's


CHECKPOINT_OF = {"pretrain": "pretrain", "proxy": "proxy", "hf": "hf_import", "rpt": "rpt", "rlp": "rlp",
                 "cnt": "cnt", "sft": "sft"}  # a start setting's value -> the stage whose checkpoint it names


def _starts(*sources) -> set[str]:
    """The stages whose checkpoints the start settings ``sources`` name (a checkpoint directory names none;
    ``rl_<x>`` names ``rl``)."""
    out = set()
    for source in sources:
        if source in CHECKPOINT_OF:
            out.add(CHECKPOINT_OF[source])
        elif isinstance(source, str) and source.startswith("rl_"):
            out.add("rl")
    return out


def inputs_of(stage: str, cfg=None) -> set[str]:
    """The stages whose outputs ``stage`` reads under ``cfg`` (``INPUTS[stage]`` without a config, or for the
    stages that read every earlier one: eval, report)."""
    if cfg is None or stage in ("hf_import", "prep", "pretrain", "proxy", "eval", "lm_eval", "report"):
        return set(INPUTS[stage])
    common = {"prep", "hf_import"}
    if stage == "select":
        sel = cfg.select
        scorer = sel.heldout_scorer or ("pretrain" if sel.proxy == "proxy" else sel.proxy)
        return common | _starts(sel.proxy, scorer)
    if stage in ("rpt", "rlp"):
        return common | {"select"} | _starts(cfg.rpt.init_from)
    if stage == "cnt":
        return common | {"select", "rpt"} | _starts(cfg.rpt.init_from)
    if stage == "rl":
        return common | _starts(*cfg.rl_task.train_on)
    if stage == "sft":
        return common | _starts(cfg.sft.init_from)
    return {"hf_import"} | _starts(cfg.hf.source)  # hf_export


def forced_stages(cfg) -> set[str]:
    """The stages this call starts over: the stage, or every stage of `pipeline`, when ``force=true``."""
    if not cfg.force or cfg.stage == "bench":
        return set()
    return set(cfg.stages) if cfg.stage == "pipeline" else {cfg.stage}


def stale_after(stages: set[str], cfg=None) -> set[str]:
    """Every stage that reads, directly or through others, the outputs of ``stages`` (``stages`` excluded), by the
    inputs ``cfg`` gives each stage (``inputs_of``)."""
    stale, frontier = set(), set(stages)
    while frontier:
        frontier = {s for s in INPUTS if frontier & inputs_of(s, cfg)} - stale - stages
        stale |= frontier
    return stale


def outputs(rd: RunDir, stage: str) -> list[Path]:
    """What ``stage`` wrote into the run (existing paths), besides its marker and metrics rows."""
    rel = {"prep": ["data"] + ([] if rd.checkpoints("hf").exists() else ["tokenizer"]),
           "hf_import": ["tokenizer"], "select": ["positions"], "eval": _eval_outputs(rd), "hf_export": ["hf"],
           "lm_eval": list(LM_EVAL_OUTPUTS)}.get(stage, [])
    found = [rd.path / r for r in rel]
    if stage in LOOP_NAMES:
        for folder in ("checkpoints", "rollouts"):
            found += sorted((rd.path / folder).glob(LOOP_NAMES[stage]))
    return [p for p in found if p.exists()]


def _eval_outputs(rd: RunDir) -> list[str]:
    """``eval/`` whole, or, when stage lm_eval's results lie in it, every entry but those (its own stage's)."""
    theirs = {Path(p).name for p in LM_EVAL_OUTPUTS if p.startswith("eval/")}
    if not any((rd.eval / name).exists() for name in theirs):
        return ["eval"]
    return [f"eval/{p.name}" for p in sorted(rd.eval.iterdir()) if p.name not in theirs]


def _aside_dir(rd: RunDir) -> Path:
    base = rd.path / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    aside, n = base, 1
    while aside.exists():
        aside, n = base.with_name(f"{base.name}-{n}"), n + 1
    return aside


def _move(src: Path, aside: Path, rd: RunDir) -> None:
    dst = aside / src.relative_to(rd.path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _move_metrics_rows(rd: RunDir, stages: set[str], aside: Path) -> int:
    """Move the metrics rows of ``stages`` to ``aside/metrics.jsonl``; the others stay, in order."""
    names = [LOOP_NAMES.get(s, s) for s in stages]
    if not rd.metrics.exists():
        return 0
    kept, moved = [], []
    for line in rd.metrics.read_text(encoding="utf-8").splitlines():
        if line.strip():
            stage = json.loads(line).get("stage", "")
            (moved if any(fnmatch.fnmatchcase(stage, n) for n in names) else kept).append(line)
    if moved:
        write_text(aside / "metrics.jsonl", "".join(line + "\n" for line in moved))
        write_text(rd.metrics, "".join(line + "\n" for line in kept))
    return len(moved)


def retire(rd: RunDir, stages: set[str], reason: dict) -> Path | None:
    """Move the outputs, markers and metrics rows of ``stages`` to a new ``superseded/<time>/``; returns it (None
    when there was nothing to move). The report folder is copied, not moved (``select`` writes a plot into it)."""
    aside = _aside_dir(rd)
    moved = []
    for stage in sorted(stages):
        paths = outputs(rd, stage) + [p for p in (rd.done_marker(stage), rd.stage_config(stage)) if p.exists()]
        for path in paths:
            _move(path, aside, rd)
        moved += [str(p.relative_to(rd.path)) for p in paths]
    if "report" in stages and rd.report.exists():
        shutil.copytree(rd.report, aside / "report")
        moved.append("report (copied)")
    rows = _move_metrics_rows(rd, stages, aside)
    if not moved and not rows:
        return None
    write_json(aside / "why.json", {**reason, "moved": moved, "metrics_rows": rows})
    return aside


def start_over(rd: RunDir, forced: set[str], given: list[str], cfg=None) -> None:
    """Retire the forced stages and the stages after them, unless this very call already did so and was
    interrupted (then the restarted stages resume). Rank 0 only."""
    pending = read_json(rd.path / PENDING) if (rd.path / PENDING).exists() else None
    record = {"stages": sorted(forced), "overrides": list(given)}
    if pending is not None and {k: pending.get(k) for k in record} == record:
        log.info("force: resuming the restart of %s begun by this same command (%s)", ", ".join(record["stages"]),
                 pending.get("aside") or "nothing was moved")
        return
    stale = stale_after(forced, cfg)
    aside = retire(rd, forced | stale, {"forced": sorted(forced), "stale": sorted(stale), "overrides": given,
                                        "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    log.info("force: %s start over; stale, redone by `rpt pipeline`: %s; old outputs in %s",
             ", ".join(sorted(forced)), ", ".join(sorted(stale)) or "none", aside or "(nothing to move)")
    write_json(rd.path / PENDING, {**record, "aside": str(aside) if aside else None})


def finished(rd: RunDir) -> None:
    """The call completed: a forced restart, if any, is over (rank 0)."""
    (rd.path / PENDING).unlink(missing_ok=True)
