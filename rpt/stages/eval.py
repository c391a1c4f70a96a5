"""Stage `eval`: next-token accuracy on the test split's high-entropy positions by difficulty, and downstream task
accuracy, for every checkpoint the run has. The test split is evaluated here only; validation during training and
any choice of a setting use the validation split (``data_prep/doc_splits.py``).

Next-token: the base (pretrained here, ``base``, or imported, ``hf``) predicting directly and reasoning first, RPT
reasoning first (and RPT directly), each greedy and averaged over k samples. Predicting directly is scored twice:
the argmax over the whole vocabulary (``direct``) and over the tokens the corpus continues with (``direct_corpus``:
format tokens such as ``<think>`` excluded, ``rpt/eval/corpus_tokens.py``); beside them the teacher-forced
log-probability of the true next token (``likelihood``). Every position's score is kept (``scores``, aligned with
``items``: document and entropy), so an aggregate over seeds can pair models on the same positions and resample
documents. With ``rpt.keep_steps``, every kept `rpt` checkpoint is scored on the same positions for the
compute-scaling curve (``rpt/eval/scaling_curve.py``, ``eval/scaling.json``). Buckets are nested like the paper's
thresholds: "easy" = entropy > 0.5 (all held-out positions), "medium" > 1.0, "hard" > 1.5. Downstream: greedy and
k-sample accuracy on the held-out questions. Concentration: for every finished RL stage, where its change of the
policy lands (``rpt.analysis.concentration``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from rpt import checkpoint
from rpt.analysis.concentration import measure_concentration
from rpt.analysis.reasoning_patterns import pattern_shares
from rpt.eval.accuracy import (
    BUCKETS,
    by_bucket,
    direct_next_token,
    mean_diversity,
    pass_at_ks,
    reasoning_first,
    sample_completions,
)
from rpt.eval.corpus_tokens import corpus_token_mask
from rpt.eval.scaling_curve import scaling_curve
from rpt.model.loading import load_eval_model
from rpt.positions import CORPUS, Positions
from rpt.reward.answer import AnswerFormat
from rpt.reward.custom import with_reward
from rpt.rollout.engine import SamplingParams
from rpt.rundir import write_json
from rpt.tasks.downstream import build_downstream_task
from rpt.tasks.next_token import NextTokenTask
from rpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)




def downstream_name(task_cfg) -> str:
    if task_cfg.source == "dataset":
        return task_cfg.dataset.path
    return "+".join(task_cfg.mix) if task_cfg.mix else task_cfg.task


def concentration_pairs(cfg, rd) -> list[tuple[str, str]]:
    """(stage, its initial checkpoint) for every stage that fine-tuned a checkpoint: ``rpt`` from ``rpt.init_from``,
    each ``rl_<source>`` with a checkpoint from ``<source>``, and ``sft`` (the SFT baseline) from ``sft.init_from``,
    so the report shows where SFT's change lands beside RL's."""
    pairs = [("rpt", cfg.rpt.init_from)] if rd.is_done("rpt") else []
    pairs += [("sft", cfg.sft.init_from)] if rd.is_done("sft") else []
    pairs += [(f"rl_{s}", s) for s in cfg.rl_task.train_on
              if checkpoint.latest_step_dir(rd.checkpoints(f"rl_{s}")) is not None]
    return pairs


def likelihood_by_bucket(items, logps, thresholds) -> dict:
    """Mean teacher-forced log-probability of the true next token, and mean probability, per nested bucket."""
    out = {}
    for name, thr in zip(BUCKETS, thresholds, strict=True):
        chosen = np.array([lp for it, lp in zip(items, logps, strict=True) if it["entropy"] > thr])
        out[name] = {"mean_logp": float(chosen.mean()) if len(chosen) else None,
                     "mean_p": float(np.exp(chosen).mean()) if len(chosen) else None, "n": len(chosen)}
    return out


def test_positions(cfg, rd, tok) -> tuple[NextTokenTask, list]:
    """The test split's positions (``eval.max_positions`` of them, a seeded sample, or all when null)."""
    nt_task = with_reward(NextTokenTask.from_rollout(Positions.of_run(rd, "test"), tok, cfg.rollout),
                          cfg.reward.next_token_fn, "reward.next_token_fn")
    order = range(len(nt_task)) if cfg.eval.max_positions is None else \
        sorted(np.random.default_rng(cfg.run.seed).permutation(len(nt_task))[:cfg.eval.max_positions].tolist())
    return nt_task, [nt_task.items[i] for i in order]


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    ec = cfg.eval
    tok = Tokenizer.from_run(rd)
    nt_task, items = test_positions(cfg, rd, tok)
    thresholds = cfg.select.difficulty_thresholds
    # the rollout's sampling (engine, top_p, stop rule) at eval's length and temperature; greedy for the greedy runs
    sampled = SamplingParams.from_rollout(cfg.rollout, tok, max_new_tokens=ec.max_new_tokens,
                                          temperature=ec.temperature)
    greedy = replace(sampled, temperature=0.0)
    next_token, scores, likelihood, patterns = {}, {}, {}, {}  # patterns: share of greedy reasoning-first responses
    corpus_tokens = corpus_token_mask(rd.path / CORPUS, tok)
    imported = checkpoint.latest_step_dir(rd.checkpoints("hf")) is not None
    for source in [s for s in ("hf", "pretrain", "rpt", "rlp", "cnt") if rd.is_done(s) or (s == "hf" and imported)]:
        model = load_eval_model(cfg.model, rt, rd, source, tok.vocab_size)
        label = "base" if source == "pretrain" else source
        greedy_rewards, greedy_texts = sample_completions(model, nt_task, items, 1, greedy, cfg.run.seed, rt.device)
        patterns[label] = pattern_shares([texts[0] for texts in greedy_texts])
        direct = direct_next_token(model, nt_task, items, rt.device, corpus_tokens)
        likelihood[label] = likelihood_by_bucket(items, direct.pop("logp"), thresholds)
        scores[label] = {**direct, "reasoning_greedy": [rewards[0] for rewards in greedy_rewards]}
        k = ec.samples if ec.next_token_samples is None else ec.next_token_samples
        if k:
            scores[label][f"reasoning_avg@{k}"] = reasoning_first(model, nt_task, items, k, sampled, cfg.run.seed,
                                                                  rt.device)
        next_token[label] = {mode: by_bucket(items, values, thresholds) for mode, values in scores[label].items()}
        log.info("eval next-token %s: %s", label, {m: v["easy"]["accuracy"] for m, v in next_token[label].items()})
    scaling = None
    if rd.is_done("rpt") and cfg.rpt.keep_steps:
        final = scores.get("rpt", {}).get("reasoning_greedy")
        scaling = scaling_curve(cfg, rt, rd, nt_task, items, greedy, tok.vocab_size, final)
    test = with_reward(build_downstream_task(cfg.rl_task, tok, "test", cfg.run.seed, cfg.rollout.chat_template,
                                             AnswerFormat.of(cfg.rollout)), cfg.reward.fn)
    test_items = test.items
    downstream, diversity = {}, {}  # diversity: of each question's k samples, averaged over questions
    sources = [("base", "pretrain"), ("hf", "hf"), ("rpt", "rpt"), ("rlp", "rlp"), ("cnt", "cnt"), ("sft", "sft")]
    sources += [(f"rl_{s}", f"rl_{s}") for s in cfg.rl_task.train_on]
    for label, source in sources:
        if checkpoint.latest_step_dir(rd.checkpoints(source)) is None:
            continue
        model = load_eval_model(cfg.model, rt, rd, source, tok.vocab_size)
        greedy_scores = reasoning_first(model, test, test_items, 1, greedy, cfg.run.seed, rt.device)
        k = ec.downstream_samples or ec.samples
        per_sample, texts = sample_completions(model, test, test_items, k, sampled, cfg.run.seed, rt.device)
        downstream[label] = {"greedy": float(np.mean(greedy_scores)),
                             f"avg@{k}": float(np.mean([sum(r) / len(r) for r in per_sample])),
                             **pass_at_ks([[test.is_correct(r) for r in rewards] for rewards in per_sample]),
                             "n": len(test_items)}
        diversity[label] = mean_diversity(texts, cfg.analysis.trajectory_threshold, test.extract)
        log.info("eval downstream %s: %s", label, downstream[label])
    concentration = {}  # every rank computes it (same seed, same numbers); rank 0 writes it
    for stage, before in concentration_pairs(cfg, rd) if ec.concentration_prompts > 0 else []:
        task = nt_task if stage == "rpt" else test
        concentration[stage] = measure_concentration(cfg.model, cfg.rollout, ec, cfg.analysis, rt, rd, task, before,
                                                     stage, cfg.run.seed)
    if rt.is_main:
        write_json(rd.eval / "next_token.json", {
            "positions": len(items), "split": "test", "thresholds": list(thresholds),
            "items": {"doc": [it["doc"] for it in items], "entropy": [it["entropy"] for it in items]},
            "results": next_token, "likelihood": likelihood, "scores": scores, "patterns": patterns})
        if scaling is not None:
            write_json(rd.eval / "scaling.json", scaling)
        write_json(rd.eval / "downstream.json", {"task": downstream_name(cfg.rl_task), "results": downstream,
                                                 "diversity": diversity})
        write_json(rd.eval / "concentration.json", concentration)
        wandb_log = ctx.metrics()  # the results as the W&B run's summary (offline by default)
        wandb_log.summary({**{f"next_token/{model}/{mode}/{bucket}": v["accuracy"]
                              for model, modes in next_token.items() for mode, buckets in modes.items()
                              for bucket, v in buckets.items()},
                           **{f"downstream/{label}/{key}": v for label, r in downstream.items()
                              for key, v in r.items() if key != "n"},
                           **{f"diversity/{label}/{key}": v for label, r in diversity.items() for key, v in r.items()},
                           **{f"concentration/{stage}/top_share": c["top_share"]
                              for stage, c in concentration.items()}})
        wandb_log.close()
    return {"next_token_positions": len(items), "downstream_questions": len(test_items),
            "concentration_stages": list(concentration)}
