"""Assemble ``report/report.md``: what the run did, the accuracy tables (every accuracy with its n and 95% Wilson
interval, ``intervals.py``), the training and validation curves, and sample rollouts (``samples.py``). Several
runs aggregated into one report: ``aggregate.py``."""

from __future__ import annotations

from pathlib import Path

from rpt.analysis import plots
from rpt.analysis.intervals import AVG_AT_K_NOTE, accuracy_interval, fmt_accuracy
from rpt.analysis.samples import samples_section
from rpt.analysis.training_curves import rl_stage_section
from rpt.config import RootConfig
from rpt.rundir import read_json, write_text

BUCKETS = ("easy", "medium", "hard")


def next_token_table(nt: dict) -> str:
    lines = ["| model | mode | easy (>{}) | medium (>{}) | hard (>{}) |".format(*tuple(nt["thresholds"])),
             "|---|---|---|---|---|"]
    for model, modes in nt["results"].items():
        for mode, buckets in modes.items():
            cells = [fmt_accuracy(buckets[b]["accuracy"], buckets[b]["n"]) for b in BUCKETS]
            lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def downstream_table(ds: dict) -> str:
    if not ds["results"]:
        return "_no downstream results_"
    keys = [k for k in next(iter(ds["results"].values())) if k != "n"]
    lines = ["| checkpoint | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, res in ds["results"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_accuracy(res.get(k), res["n"]) for k in keys) + " |")
    return "\n".join(lines)


def accuracy_plot(rd, nt: dict) -> str:
    chosen = [(f"{m} / {mode}", b) for m, modes in nt["results"].items() for mode, b in modes.items()
              if "avg@" not in mode]
    bars = {name: [b[k]["accuracy"] or 0.0 for k in BUCKETS] for name, b in chosen}
    intervals = {name: [accuracy_interval(b[k]["accuracy"], b[k]["n"]) for k in BUCKETS] for name, b in chosen}
    plots.grouped_bars(list(BUCKETS), bars, "next-token accuracy (bars: 95% Wilson)",
                       "Held-out high-entropy positions", rd.report / "next_token_accuracy.png", intervals)
    return "next_token_accuracy.png"


def selection_section(cfg: RootConfig, rd) -> str:
    select = rd.summary("select") if rd.is_done("select") else {}
    ingest = rd.summary("prep").get("ingest", {}) if rd.is_done("prep") else {}
    skipped = ingest.get("skipped") or {}
    cap = f", positions above {cfg.select.max_entropy} nats dropped as noise" if cfg.select.max_entropy else ""
    return (f"Scored {select.get('positions_scored', '–')} positions of the RPT split with the base model as proxy "
            f"(top-{cfg.select.top_k} entropy, renormalised){cap}. Mode `{cfg.select.mode}` kept "
            f"{select.get('train_positions', '–')} training positions (fraction {select.get('fraction_kept', 0):.3f}); "
            f"held-out positions: {select.get('heldout_positions', '–')} (by highest bucket: "
            f"{select.get('heldout_buckets', {})}). Corpus records skipped at ingestion: "
            f"{skipped if skipped else 'none'}.\n\n![entropy_hist](entropy_hist.png)\n")


def build_report(cfg: RootConfig, rd) -> Path:
    nt = read_json(rd.eval / "next_token.json")
    ds = read_json(rd.eval / "downstream.json")
    accuracy_png = accuracy_plot(rd, nt)
    stages = ["rpt"] + [f"rl_{s}" for s in cfg.rl_task.train_on]
    training = "\n".join(rl_stage_section(rd, s, cfg.analysis.law_fit_fraction)[0] for s in stages)
    samples = samples_section(rd.path / "rollouts", stages, cfg.report.samples_per_kind, cfg.report.sample_chars)
    text = f"""# RPT run `{rd.path.name}`

Model `{cfg.model.name}` ({cfg.model.num_layers} layers, width {cfg.model.hidden_size}); corpus `{cfg.data.source}`;
template `{cfg.rollout.template}`; G={cfg.rollout.group_size}, temperature {cfg.rollout.temperature};
policy loss `{cfg.algo.policy_loss}`, aggregation `{cfg.algo.loss_agg}`, forking rho {cfg.algo.forking_rho},
dynamic sampling {cfg.algo.dynamic_sampling}, {cfg.rpt.updates_per_rollout()} optimizer step(s) per rollout.

## Position selection
{selection_section(cfg, rd)}
## Next-token accuracy on held-out high-entropy positions
{nt['positions']} positions; buckets are nested (a "hard" position is also "medium" and "easy").
"direct" = greedy next token with no reasoning; "reasoning" = the model writes `<think> … </think> \\boxed{{…}}`
first and the box is scored with the prefix-matching reward. Cells: accuracy [95% interval] (n).
{AVG_AT_K_NOTE}

{next_token_table(nt)}

![next_token_accuracy]({accuracy_png})

## Downstream task accuracy, `{ds['task']}` held-out questions
Base and RPT checkpoints, and each after the same `rl` budget ({cfg.rl.steps} steps × {cfg.rl.prompts_per_step}
prompts × G={cfg.rollout.group_size}). Cells: accuracy [95% Wilson interval] (n questions), avg@k as above.

{downstream_table(ds)}

## Training: reward, entropy, the entropy law, planning vs execution
Planning tokens are those inside the strategic grams {list(cfg.analysis.strategic_grams)}; a token is forking when
its entropy exceeds {cfg.analysis.forking_threshold} nats; the overlap is between the top-{cfg.analysis.overlap_rho}
entropy tokens of the current and the initial model on the same rollouts.

{training}
{samples}"""
    path = rd.report / "report.md"
    write_text(path, text)
    return path
