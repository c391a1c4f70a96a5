"""Stage `rl`: downstream RL with verifiable rewards on reasoning-gym tasks or a question/answer dataset, from each
checkpoint in ``rl_task.train_on`` (same seeds and budget for every one, so their results compare); with
``rl.eval_every``, greedy accuracy on a fixed sample of the held-out questions along the way.

A run's base is the model it pretrained (``pretrain``) or imported (``hf``): the real-model presets set
``rl_task.train_on: [hf, rpt]``. Every listed start is checked before any training, and one the run does not have
is refused with the starts it does have, instead of training the others first and failing half-way."""

from __future__ import annotations

from rpt import checkpoint
from rpt.errors import MissingInput
from rpt.eval.validation import Validator
from rpt.model.loading import checkpoint_dir
from rpt.reward.answer import AnswerFormat
from rpt.reward.custom import with_reward
from rpt.rollout.engine import SamplingParams
from rpt.stages.rl_training import train
from rpt.tasks.downstream import build_downstream_task
from rpt.tokenizer import Tokenizer

CANDIDATES = ("hf", "pretrain", "rpt", "rlp", "cnt")  # stages whose checkpoints `rl` can start from


def check_starts(train_on, rd) -> None:
    """Refuse a ``rl_task.train_on`` entry with no checkpoint, naming the starts this run has."""
    missing = []
    for source in train_on:
        if source in ("pretrain", "rpt", "rlp", "cnt") and not rd.is_done(source):
            missing.append(source)
            continue
        try:
            checkpoint_dir(rd, source)
        except FileNotFoundError:
            missing.append(source)
    if missing:
        have = [s for s in CANDIDATES if checkpoint.latest_step_dir(rd.checkpoints(s)) is not None]
        raise MissingInput(
            f"rl_task.train_on={list(train_on)}: this run ({rd.path}) has no finished checkpoint for {missing}; it has "
            f"{have or 'none'}. A run that imported its base (hf_import) trains from it: rl_task.train_on=[hf,rpt]")


def run(ctx) -> dict:
    cfg = ctx.cfg
    check_starts(cfg.rl_task.train_on, ctx.rd)
    tok = Tokenizer.from_run(ctx.rd)
    task = with_reward(build_downstream_task(cfg.rl_task, tok, "train", cfg.run.seed, cfg.rollout.chat_template,
                                             AnswerFormat.of(cfg.rollout)), cfg.reward.fn)
    validator = None
    if cfg.rl.eval_every:
        test = with_reward(build_downstream_task(cfg.rl_task, tok, "test", cfg.run.seed, cfg.rollout.chat_template,
                                                 AnswerFormat.of(cfg.rollout)), cfg.reward.fn)
        sampling = SamplingParams.from_rollout(cfg.rollout, tok, max_new_tokens=cfg.eval.max_new_tokens)
        validator = Validator(test, cfg.rl.eval_size, sampling, cfg.run.seed, ctx.rt)
    summary = {}
    for source in cfg.rl_task.train_on:
        summary[source] = train(ctx, task, f"rl_{source}", source, cfg.rl, validator)
    return summary
