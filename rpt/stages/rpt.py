"""Stage `rpt`: reinforcement pre-training, GRPO on next-token reasoning over the selected positions."""

from __future__ import annotations

from rpt.tasks.next_token import NextTokenTask
from rpt.tokenizer import Tokenizer
from rpt.train.rl_loop import train


def run(ctx) -> dict:
    ctx.rd.require("select")
    tok = Tokenizer.from_run(ctx.rd)
    task = NextTokenTask(ctx.rd.positions / "train.jsonl", tok, ctx.cfg.rollout.templates[ctx.cfg.rollout.template],
                         ctx.cfg.rollout.format_reward)
    return train(ctx, task, "rpt", ctx.cfg.rpt.init_from, ctx.cfg.rpt)
