"""Assemble ``report/report.md``: what the run did, the accuracy tables and the training curves."""

from __future__ import annotations

from pathlib import Path

from rpt.analysis import plots
from rpt.analysis.training_curves import rl_stage_section
from rpt.config import RootConfig
from rpt.rundir import read_json, write_text


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def next_token_table(nt: dict) -> str:
    lines = ["| model | mode | easy (>{}) | medium (>{}) | hard (>{}) |".format(*tuple(nt["thresholds"])),
             "|---|---|---|---|---|"]
    for model, modes in nt["results"].items():
        for mode, buckets in modes.items():
            cells = [f"{_pct(buckets[b]['accuracy'])} (n={buckets[b]['n']})" for b in ("easy", "medium", "hard")]
            lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def downstream_table(ds: dict) -> str:
    if not ds["results"]:
        return "_no downstream results_"
    keys = [k for k in next(iter(ds["results"].values())) if k != "n"]
    lines = ["| checkpoint | " + " | ".join(keys) + " | questions |", "|---|" + "---|" * (len(keys) + 1)]
    for name, res in ds["results"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(res[k]) for k in keys) + f" | {res['n']} |")
    return "\n".join(lines)


def accuracy_plot(rd, nt: dict) -> str:
    bars = {f"{m} / {mode}": [b[k]["accuracy"] or 0.0 for k in ("easy", "medium", "hard")]
            for m, modes in nt["results"].items() for mode, b in modes.items() if "avg@" not in mode}
    plots.grouped_bars(["easy", "medium", "hard"], bars, "next-token accuracy",
                       "Held-out high-entropy positions", rd.report / "next_token_accuracy.png")
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
    text = f"""# RPT run `{rd.path.name}`

Model `{cfg.model.name}` ({cfg.model.num_layers} layers, width {cfg.model.hidden_size}); corpus `{cfg.data.source}`;
template `{cfg.rollout.template}`; G={cfg.rollout.group_size}, temperature {cfg.rollout.temperature};
policy loss `{cfg.algo.policy_loss}`, aggregation `{cfg.algo.loss_agg}`, forking rho {cfg.algo.forking_rho},
dynamic sampling {cfg.algo.dynamic_sampling}, {cfg.rpt.updates_per_rollout()} optimizer step(s) per rollout.

## Position selection
{selection_section(cfg, rd)}
## Next-token accuracy on held-out high-entropy positions (%)
{nt['positions']} positions; buckets are nested (a "hard" position is also "medium" and "easy").
"direct" = greedy next token with no reasoning; "reasoning" = the model writes `<think> … </think> \\boxed{{…}}`
first and the box is scored with the prefix-matching reward.

{next_token_table(nt)}

![next_token_accuracy]({accuracy_png})

## Downstream task accuracy (%), `{ds['task']}` held-out questions
Base and RPT checkpoints, and each after the same `rl` budget ({cfg.rl.steps} steps × {cfg.rl.prompts_per_step}
prompts × G={cfg.rollout.group_size}).

{downstream_table(ds)}

## Training: reward, entropy, the entropy law, planning vs execution
Planning tokens are those inside the strategic grams {list(cfg.analysis.strategic_grams)}; a token is forking when
its entropy exceeds {cfg.analysis.forking_threshold} nats; the overlap is between the top-{cfg.analysis.overlap_rho}
entropy tokens of the current and the initial model on the same rollouts.

{training}
"""
    path = rd.report / "report.md"
    write_text(path, text)
    return path
