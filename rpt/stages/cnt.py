"""Stage `cnt`: the continual next-token baseline of the RPT paper — plain next-token training on the same
selected positions, starting from the same checkpoint, for the same number of steps as `rpt`.

Each step trains on ``rpt.prompts_per_step × rollout.group_size`` positions (as many sequences as an RPT step
updates on), with cross entropy on the token at the position. It costs far fewer FLOPs than RPT (no rollouts):
the comparison is at equal steps and sequences, which is how the paper's baseline is described.
"""

from __future__ import annotations

import logging

import torch

from rpt.checkpoint import latest_step_dir
from rpt.distributed import dp_mean
from rpt.model.footprint import model_vocab
from rpt.model.forward import last_token_logits
from rpt.model.loading import checkpoint_dir
from rpt.positions import Positions
from rpt.tasks.next_token import NextTokenTask
from rpt.tokenizer import Tokenizer
from rpt.train.loop import LoopSpec, run_loop
from rpt.train.optim import build_trainable

log = logging.getLogger(__name__)


def next_token_loss(model, items, device) -> torch.Tensor:
    logits = last_token_logits(model, [it["context"] for it in items], device)
    targets = torch.tensor([it["target"][0] for it in items], device=device)
    return torch.nn.functional.cross_entropy(logits, targets)


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    lc = cfg.rpt
    rd.require("select")
    tok = Tokenizer.from_run(rd)
    task = NextTokenTask.from_rollout(Positions.of_run(rd, "train"), tok, cfg.rollout)
    trainable = build_trainable(cfg.model, model_vocab(cfg.model, tok.vocab_size), rt, lc, lc.steps)
    per_step = lc.prompts_per_step * cfg.rollout.group_size

    def step_fn(step: int, state: dict) -> tuple[dict, dict]:
        items = task.items_for_step(step, per_step, cfg.run.seed)[rt.dp_rank::rt.dp_size]
        trainable.zero_grad()
        loss = next_token_loss(trainable.model, items, rt.device)
        loss.backward()
        _, grad_norm = trainable.step()
        return {"loss": dp_mean(loss.item()), "grad_norm": grad_norm, "lr": trainable.lr}, state

    spec = LoopSpec("cnt", lc.steps, lc.checkpoint_every, checkpoint_dir(rd, lc.init_from), postfix=("loss",))
    history = run_loop(ctx, spec, trainable, step_fn)
    return {"steps": lc.steps, "final_loss": history[-1]["loss"] if history else None,
            "checkpoint": str(latest_step_dir(rd.checkpoints("cnt")))}
