"""Assemble ``report/report.md``: what the run did, the accuracy tables and the training curves."""

from __future__ import annotations

from pathlib import Path

from rpt.analysis import plots
from rpt.metrics import read_metrics
from rpt.rundir import read_json, write_text


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def next_token_table(nt: dict) -> str:
    lines = ["| model | mode | easy (>%s) | medium (>%s) | hard (>%s) |" % tuple(nt["thresholds"]),
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


def training_plots(rd, rl_stages: list[str]) -> list[str]:
    out = []
    rpt_rows = read_metrics(rd.metrics, "rpt")
    if rpt_rows:
        plots.curves({"rpt": _series(rpt_rows, "reward_mean")}, "mean reward", "RPT: reward per step",
                     rd.report / "rpt_reward.png")
        plots.curves({"all tokens": _series(rpt_rows, "entropy"),
                      "top-20% (forking) tokens": _series(rpt_rows, "entropy_forking")},
                     "policy entropy (nats)", "RPT: policy entropy per step", rd.report / "rpt_entropy.png")
        out += ["rpt_reward.png", "rpt_entropy.png"]
    rl = {s: read_metrics(rd.metrics, s) for s in rl_stages}
    rl = {s: rows for s, rows in rl.items() if rows}
    if rl:
        plots.curves({s: _series(rows, "reward_mean") for s, rows in rl.items()}, "mean reward",
                     "Downstream RL: reward per step", rd.report / "rl_reward.png")
        plots.curves({s: _series(rows, "entropy") for s, rows in rl.items()}, "policy entropy (nats)",
                     "Downstream RL: policy entropy per step", rd.report / "rl_entropy.png")
        out += ["rl_reward.png", "rl_entropy.png"]
    return out


def accuracy_plot(rd, nt: dict) -> str:
    bars = {f"{m} / {mode}": [b[k]["accuracy"] or 0.0 for k in ("easy", "medium", "hard")]
            for m, modes in nt["results"].items() for mode, b in modes.items() if "avg@" not in mode}
    plots.grouped_bars(["easy", "medium", "hard"], bars, "next-token accuracy",
                       "Held-out high-entropy positions", rd.report / "next_token_accuracy.png")
    return "next_token_accuracy.png"


def build_report(cfg, rd) -> Path:
    nt = read_json(rd.eval / "next_token.json")
    ds = read_json(rd.eval / "downstream.json")
    select = rd.summary("select") if rd.is_done("select") else {}
    rl_stages = [f"rl_{s}" for s in cfg.rl_task.train_on]
    images = training_plots(rd, rl_stages) + [accuracy_plot(rd, nt)]
    if (rd.report / "entropy_hist.png").exists():
        images.insert(0, "entropy_hist.png")
    rpt_rows = read_metrics(rd.metrics, "rpt")
    first, last = (rpt_rows[0], rpt_rows[-1]) if rpt_rows else ({}, {})
    text = f"""# RPT run `{rd.path.name}`

Model `{cfg.model.name}` ({cfg.model.num_layers} layers, width {cfg.model.hidden_size}); corpus `{cfg.data.source}`;
template `{cfg.rollout.template}`; G={cfg.rollout.group_size}, temperature {cfg.rollout.temperature};
policy loss `{cfg.algo.policy_loss}`, aggregation `{cfg.algo.loss_agg}`, forking rho {cfg.algo.forking_rho}.

## Position selection
Scored {select.get('positions_scored', '–')} positions with the base model as proxy (top-{cfg.select.top_k} entropy);
mode `{cfg.select.mode}` kept {select.get('train_positions', '–')} training positions
(fraction {select.get('fraction_kept', 0):.3f}); held-out positions: {select.get('heldout_positions', '–')}
(by highest bucket: {select.get('heldout_buckets', {})}).

## Next-token accuracy on held-out high-entropy positions (%)
{nt['positions']} positions; buckets are nested (a "hard" position is also "medium" and "easy").
"direct" = greedy next token with no reasoning; "reasoning" = the model writes `<think> … </think> \\boxed{{…}}`
first and the box is scored with the prefix-matching reward.

{next_token_table(nt)}

## Downstream task accuracy (%), `{ds['task']}` held-out questions
Base and RPT checkpoints, and each after the same `rl` budget ({cfg.rl.steps} steps × {cfg.rl.prompts_per_step}
prompts × G={cfg.rollout.group_size}).

{downstream_table(ds)}

## RPT training
Steps: {len(rpt_rows)}; reward {first.get('reward_mean', 0):.3f} → {last.get('reward_mean', 0):.3f};
policy entropy {first.get('entropy', 0):.3f} → {last.get('entropy', 0):.3f};
mean response length {last.get('response_length', 0):.1f} tokens.

""" + "\n".join(f"![{Path(i).stem}]({i})" for i in images) + "\n"
    path = rd.report / "report.md"
    write_text(path, text)
    return path
