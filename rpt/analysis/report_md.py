"""Assemble ``report/report.md``: what the run did, the accuracy tables (every accuracy with its n and 95% Wilson
interval, ``intervals.py``), the training and validation curves, and sample rollouts (``samples.py``). Several
runs aggregated into one report: ``aggregate.py``."""

from __future__ import annotations

from pathlib import Path

from rpt.analysis import plots
from rpt.analysis.heldout_md import contamination_section, likelihood_table
from rpt.analysis.intervals import AVG_AT_K_NOTE, accuracy_interval, fmt_accuracy
from rpt.analysis.lm_eval_md import lm_eval_section
from rpt.analysis.reasoning_patterns import rules_markdown
from rpt.analysis.samples import samples_section
from rpt.analysis.scaling import full_test_section
from rpt.analysis.training_curves import rl_stage_section
from rpt.config import RootConfig
from rpt.reward.answer import AnswerFormat
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


def patterns_table(nt: dict) -> str:
    """Share of each checkpoint's greedy reasoning-first responses per reasoning pattern, with the rules."""
    shares = nt.get("patterns") or {}
    if not any(shares.values()):
        return ""
    names = list(next(v for v in shares.values() if v))
    lines = ["Reasoning patterns of the greedy reasoning-first responses on these positions (share of responses; "
             "one response can show several). Rules, matched case-insensitively on the text before `</think>`:",
             "", rules_markdown(), "", "| checkpoint | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, row in shares.items():
        if row:
            lines.append(f"| {label} | " + " | ".join(f"{100 * row[n]:.1f}%" for n in names) + " |")
    return "\n".join(lines) + "\n"


def downstream_table(ds: dict) -> str:
    if not ds["results"]:
        return "_no downstream results_"
    keys = [k for k in next(iter(ds["results"].values())) if k != "n"]
    lines = ["| checkpoint | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, res in ds["results"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_accuracy(res.get(k), res["n"]) for k in keys) + " |")
    return "\n".join(lines)


DIVERSITY_COLUMNS = {"distinct_answers": "distinct answers", "distinct_trajectories": "distinct trajectories",
                     "pairwise_similarity": "pairwise chrF similarity", "distinct_ngram_share": "distinct 3-gram share"}


def diversity_table(ds: dict) -> str:
    """How diverse each checkpoint's k samples per question are ("RL squeezes, SFT expands"), when measured."""
    rows = ds.get("diversity") or {}
    if not any(rows.values()):
        return ""
    k = next((key.split("@")[1] for key in next(iter(ds["results"].values())) if key.startswith("avg@")), "k")
    lines = [f"Diversity of the {k} samples per question (means over questions; trajectories: UPGMA clusters on "
             "chrF):", "", "| checkpoint | " + " | ".join(DIVERSITY_COLUMNS.values()) + " |",
             "|---|" + "---|" * len(DIVERSITY_COLUMNS)]
    for name, values in rows.items():
        if values:
            lines.append(f"| {name} | " + " | ".join(f"{values[c]:.3f}" for c in DIVERSITY_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def accuracy_plot(rd, nt: dict) -> str:
    chosen = [(f"{m} / {mode}", b) for m, modes in nt["results"].items() for mode, b in modes.items()
              if "avg@" not in mode]
    bars = {name: [b[k]["accuracy"] or 0.0 for k in BUCKETS] for name, b in chosen}
    intervals = {name: [accuracy_interval(b[k]["accuracy"], b[k]["n"]) for k in BUCKETS] for name, b in chosen}
    plots.grouped_bars(list(BUCKETS), bars, "next-token accuracy (bars: 95% Wilson)",
                       "Held-out high-entropy positions", rd.report / "next_token_accuracy.png", intervals)
    return "next_token_accuracy.png"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def concentration_section(rd) -> str:
    """The section on where RL's effect lands, from ``eval/concentration.json`` (``rpt.analysis.concentration``): a
    table per stage, the share at the top cut in words, the Lorenz-style curves; empty when there is nothing."""
    path = rd.eval / "concentration.json"
    results = read_json(path) if path.exists() else {}
    if not results:
        return ""
    top = next(iter(results.values()))["top"]
    lines = [f"| stage (from) | top-{top:.0%} share of the change (KL) | top-{top:.0%} share of \\|Δ log p\\| | "
             "planning: share of tokens | planning: share of the change | mean KL per token (nats) | N tokens | "
             "rollouts (prompts × G) |",
             "|---|---|---|---|---|---|---|---|"]
    words = []
    for stage, r in results.items():
        lines.append(f"| {stage} (from `{r['before']}`) | {_pct(r['top_share'])} | {_pct(r['logp']['top_share'])} | "
                     f"{_pct(r.get('planning_token_share'))} | {_pct(r.get('planning_change_share'))} | "
                     f"{r['mean_kl']:.3g} | {r['tokens']} | {r['prompts']} × {r['samples_per_prompt']} |")
        if r["top_share"] is None:
            words.append(f"`{stage}` did not change the policy on these rollouts (no KL change to share out).")
            continue
        words.append(f"`{stage}`: the top {top:.0%} of response tokens by the initial policy's entropy carry "
                     f"{_pct(r['top_share'])} of the policy's change ({r['top_share'] / top:.1f}× a uniform spread's "
                     f"{top:.0%}); planning tokens are {_pct(r.get('planning_token_share'))} of the tokens and carry "
                     f"{_pct(r.get('planning_change_share'))} of the change.")
    curves = {f"{stage} from {r['before']} (top {top:.0%}: {_pct(r['top_share'])})": r["curve"]
              for stage, r in results.items() if r["curve"]}
    image = ""
    if curves:
        plots.concentration_curves(curves, top, rd.report / "concentration.png")
        image = "\n![concentration](concentration.png)\n"
    return f"""## Where RL's effect lands
Each RL stage's starting policy samples G responses to each of a fixed sample of held-out prompts (`rpt`: held-out
positions; `rl_*`: downstream test questions). On every response token the change is KL(π_after ‖ π_before) of the
full next-token distributions at the sampling temperature (and, second column, |Δ log p| of the sampled token);
tokens are ranked by the *starting* policy's entropy. If the change ignored entropy, the top {top:.0%} of tokens would
carry {top:.0%} of it (the diagonal in the plot); the high-entropy-minority finding predicts far more. Planning
tokens: inside the strategic grams listed under Training.

{chr(10).join(lines)}

{chr(10).join(f"- {w}" for w in words)}
{image}
"""


def selection_section(cfg: RootConfig, rd) -> str:
    select = rd.summary("select") if rd.is_done("select") else {}
    ingest = rd.summary("prep").get("ingest", {}) if rd.is_done("prep") else {}
    skipped = ingest.get("skipped") or {}
    cap = f", positions above {cfg.select.max_entropy} nats dropped as noise" if cfg.select.max_entropy else ""
    names = {"pretrain": "the base model", "hf": "the imported model", "proxy": "the separate proxy model"}
    proxy = names.get(cfg.select.proxy, f"`{cfg.select.proxy}`")
    if cfg.select.bucket_source() != cfg.select.proxy:
        scorer = cfg.select.bucket_source()
        proxy += f" (held-out positions bucketed by {names.get(scorer, f'`{scorer}`')}'s entropy)"
    return (f"Scored {select.get('positions_scored', '–')} positions of the RPT split with {proxy} as proxy "
            f"(top-{cfg.select.top_k} entropy, renormalised){cap}. Mode `{cfg.select.mode}` kept "
            f"{select.get('train_positions', '–')} training positions (fraction {select.get('fraction_kept', 0):.3f}); "
            f"held-out positions per split: {select.get('heldout_positions', '–')} (by highest bucket: "
            f"{select.get('heldout_buckets', {})}). Corpus records skipped at ingestion: "
            f"{skipped if skipped else 'none'}.\n\n![entropy_hist](entropy_hist.png)\n")


def training_warnings(rd) -> list[str]:
    """The warnings RL stages recorded in their summaries (``no_answer_warning``, ``rpt.train.no_answer``); the
    `rl` stage's summary holds one entry per starting checkpoint."""
    found = []
    for stage in ("rpt", "rlp", "rl"):
        summary = rd.summary(stage) if rd.is_done(stage) else {}
        parts = [summary] + [v for v in summary.values() if isinstance(v, dict)]
        found += [part[key] for part in parts for key in ("no_answer_warning", "mismatch_warning") if part.get(key)]
    return found


def warnings_section(rd) -> str:
    found = training_warnings(rd)
    if not found:
        return ""
    items = "\n".join(f"- {w}" for w in found)
    return f"""## ⚠ Warnings: training that could not learn
{items}

"""


def build_report(cfg: RootConfig, rd) -> Path:
    nt = read_json(rd.eval / "next_token.json")
    scaling_path = rd.eval / "scaling.json"
    scaling_md = full_test_section(read_json(scaling_path), rd.report) if scaling_path.exists() else ""
    ds = read_json(rd.eval / "downstream.json")
    accuracy_png = accuracy_plot(rd, nt)
    stages = ["rpt"] + (["rlp"] if rd.is_done("rlp") else []) + [f"rl_{s}" for s in cfg.rl_task.train_on]
    training = "\n".join(rl_stage_section(rd, s, cfg.analysis.law_fit_fraction)[0] for s in stages)
    samples = samples_section(rd.path / "rollouts", stages, cfg.report.samples_per_kind, cfg.report.sample_chars)
    warn = warnings_section(rd)  # at the top: a stage that could not learn must not read as a result
    ds_from = f" from step {cfg.algo.dynamic_sampling_from_step}" if cfg.algo.dynamic_sampling_from_step else ""
    answer_rule = AnswerFormat.of(cfg.rollout).describe().replace("\\boxed{}", "`\\boxed{…}`")
    text = f"""# RPT run `{rd.path.name}`

{warn}Model `{cfg.model.name}` ({cfg.model.num_layers} layers, width {cfg.model.hidden_size}); corpus
`{cfg.data.source}`; template `{cfg.rollout.template}`; G={cfg.rollout.group_size}, temperature
{cfg.rollout.temperature}; policy loss `{cfg.algo.policy_loss}`, aggregation `{cfg.algo.loss_agg}`, forking rho
{cfg.algo.forking_rho}, dynamic sampling {cfg.algo.dynamic_sampling}{ds_from}, {cfg.rpt.updates_per_rollout()}
optimizer step(s) per rollout.

## Position selection
{selection_section(cfg, rd)}
## Held-out data
{contamination_section(rd)}
## Next-token accuracy on the test split's high-entropy positions
{nt['positions']} positions of the test split (validation, used during training, is a separate split); buckets are
nested (a "hard" position is also "medium" and "easy"). `hf` = the imported base model (`hf_import`), `base` = the
base pretrained in this run. "direct" = greedy next token with no reasoning, over the whole vocabulary;
"direct_corpus" = the same over the tokens the corpus holds (format tokens such as `<think>` excluded);
"reasoning" = the model reasons first and states {answer_rule}, scored with the prefix-matching
reward. Cells: accuracy [95% interval] (n). The intervals treat positions as independent, which
they are not (they cluster by document); compare seeds with the aggregate report's paired intervals.
{AVG_AT_K_NOTE}

{next_token_table(nt)}

{likelihood_table(nt)}
{scaling_md}
![next_token_accuracy]({accuracy_png})

{patterns_table(nt)}
## Downstream task accuracy, `{ds['task']}` held-out questions
Base and RPT checkpoints, and each after the same `rl` budget ({cfg.rl.steps} steps × {cfg.rl.prompts_per_step}
prompts × G={cfg.rollout.group_size}). Cells: accuracy [95% Wilson interval] (n questions), avg@k as above.

{downstream_table(ds)}

{diversity_table(ds)}
{concentration_section(rd)}
{lm_eval_section(rd.path)}
## Training: reward, entropy, the entropy law, planning vs execution
Planning tokens are those inside the strategic grams {list(cfg.analysis.strategic_grams)}; a token is forking when
its entropy exceeds {cfg.analysis.forking_threshold} nats; the overlap is between the top-{cfg.analysis.overlap_rho}
entropy tokens of the current and the initial model on the same rollouts.

{training}
{samples}"""
    path = rd.report / "report.md"
    write_text(path, text)
    return path
