"""Stage `rpt`: reinforcement pre-training, GRPO on next-token reasoning over the selected positions; with
``rpt.eval_every``, greedy accuracy on a fixed sample of the validation split's positions (by difficulty) along the
way (the test split is `eval`'s alone). Stage `rlp` (``rpt.stages.rlp``) trains on the same task through here."""

from __future__ import annotations

from rpt.eval.validation import Validator
from rpt.positions import Positions
from rpt.reward.custom import with_reward
from rpt.rollout.engine import SamplingParams
from rpt.stages.rl_training import train
from rpt.tasks.next_token import NextTokenTask
from rpt.tokenizer import Tokenizer


def train_next_token(ctx, stage_name: str) -> dict:
    """Train ``ctx.cfg``'s algorithm on the train split's positions with the `rpt` loop settings (``rpt.*``), from
    ``rpt.init_from``; checkpoints go to ``checkpoints/<stage_name>``."""
    cfg, rd = ctx.cfg, ctx.rd
    rd.require("select")
    tok = Tokenizer.from_run(rd)
    reward = cfg.reward.next_token_fn  # a user's reward instead of the prefix reward (rpt/reward/custom.py)
    task = with_reward(NextTokenTask.from_rollout(Positions.of_run(rd, "train"), tok, cfg.rollout,
                                                  cfg.rollout.format_reward), reward, "reward.next_token_fn")
    validator = None
    if cfg.rpt.eval_every:
        validation = with_reward(NextTokenTask.from_rollout(Positions.of_run(rd, "validation"), tok, cfg.rollout),
                                 reward, "reward.next_token_fn")
        sampling = SamplingParams.from_rollout(cfg.rollout, tok, max_new_tokens=cfg.eval.max_new_tokens)
        validator = Validator(validation, cfg.rpt.eval_size, sampling, cfg.run.seed, ctx.rt,
                              cfg.select.difficulty_thresholds)
    return train(ctx, task, stage_name, cfg.rpt.init_from, cfg.rpt, validator)


def run(ctx) -> dict:
    return train_next_token(ctx, "rpt")
