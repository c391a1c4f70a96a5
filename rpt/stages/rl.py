"""Stage `rl`: downstream RL with verifiable rewards on reasoning-gym tasks or a question/answer dataset, from each
checkpoint in ``rl_task.train_on`` (same seeds and budget for every one, so their results compare); with
``rl.eval_every``, greedy accuracy on a fixed sample of the held-out questions along the way."""

from __future__ import annotations

from rpt.eval.validation import Validator
from rpt.rollout.engine import SamplingParams
from rpt.tasks.downstream import build_downstream_task
from rpt.tokenizer import Tokenizer
from rpt.train.rl_loop import train


def run(ctx) -> dict:
    cfg = ctx.cfg
    tok = Tokenizer.from_run(ctx.rd)
    task = build_downstream_task(cfg.rl_task, tok, "train", cfg.run.seed)
    validator = None
    if cfg.rl.eval_every:
        test = build_downstream_task(cfg.rl_task, tok, "test", cfg.run.seed)
        sampling = SamplingParams.from_rollout(cfg.rollout, tok, max_new_tokens=cfg.eval.max_new_tokens)
        validator = Validator(test, cfg.rl.eval_size, sampling, cfg.run.seed, ctx.rt)
    summary = {}
    for source in cfg.rl_task.train_on:
        if source in ("pretrain", "rpt", "cnt"):
            ctx.rd.require(source)
        summary[source] = train(ctx, task, f"rl_{source}", source, cfg.rl, validator)
    return summary
