"""Stage `rl`: downstream RL with verifiable rewards on reasoning-gym tasks or a question/answer dataset, from each
checkpoint in ``rl_task.train_on`` (same seeds and budget for every one, so their results compare)."""

from __future__ import annotations

from rpt.tasks.downstream import build_downstream_task
from rpt.tokenizer import Tokenizer
from rpt.train.rl_loop import train


def run(ctx) -> dict:
    tok = Tokenizer.from_run(ctx.rd)
    task = build_downstream_task(ctx.cfg.rl_task, tok, "train", ctx.cfg.run.seed)
    summary = {}
    for source in ctx.cfg.rl_task.train_on:
        if source in ("pretrain", "rpt", "cnt"):
            ctx.rd.require(source)
        summary[source] = train(ctx, task, f"rl_{source}", source, ctx.cfg.rl)
    return summary
