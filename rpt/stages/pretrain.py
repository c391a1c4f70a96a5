"""Stage `pretrain`: train the tiny base model on next-token loss over the pretraining split.

Runs in the shared training loop (``rpt.train.loop``): resumes from ``checkpoints/pretrain/latest`` if a previous
run was interrupted (same data order: the data cursor is the step number; exact RNG).
"""

from __future__ import annotations

import logging
import time

from rpt.checkpoint import latest_step_dir
from rpt.distributed import dp_mean
from rpt.model.footprint import model_vocab
from rpt.model.forward import lm_loss
from rpt.tokenizer import Tokenizer
from rpt.train.loop import LoopSpec, run_loop
from rpt.train.optim import build_trainable
from rpt.train.pretrain_data import batch_for_step, build_gpt_dataset

log = logging.getLogger(__name__)


def run(ctx) -> dict:
    return train_language_model(ctx, ctx.cfg.model, ctx.cfg.pretrain, "pretrain")


def train_language_model(ctx, model_cfg, pc, stage: str) -> dict:
    """Next-token training of a ``model_cfg`` model on the pretraining split, by ``pc`` (a ``PretrainConfig``),
    checkpointed as ``stage`` (the base here; the separate selection proxy in stage `proxy`)."""
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    rd.require("prep")
    tok = Tokenizer.from_run(rd)
    trainable = build_trainable(model_cfg, model_vocab(model_cfg, tok.vocab_size), rt, pc, pc.steps)
    dataset = build_gpt_dataset(str(rd.data / "pretrain"), tok, cfg.data.seq_length,
                                pc.steps * pc.micro_batch_size * rt.dp_size, cfg.run.seed, str(rd.data / "cache"))
    # the losses since the last logged row live in the loop state, which every checkpoint saves: a stage stopped
    # between two rows (a preemption) resumes with them, so its next row averages the same steps as an
    # uninterrupted run's; the throughput counts only this launch's steps (a timing, not a metric to reproduce)
    speed = {"tokens": 0, "t0": time.perf_counter()}

    def step_fn(step: int, state: dict) -> tuple[dict | None, dict]:
        batch = batch_for_step(dataset, step, pc.micro_batch_size, rt.dp_rank, rt.dp_size).to(rt.device)
        trainable.zero_grad()
        loss = lm_loss(trainable.model, batch)
        loss.backward()
        _, grad_norm = trainable.step()
        window = {"loss": state["loss_window"]["loss"] + dp_mean(loss.item()),
                  "steps": state["loss_window"]["steps"] + 1}
        speed["tokens"] += batch[:, 1:].numel() * rt.dp_size
        if (step + 1) % pc.log_every and step + 1 != pc.steps:
            return None, {**state, "loss_window": window}
        row = {"loss": window["loss"] / window["steps"], "grad_norm": grad_norm, "lr": trainable.lr,
               "tokens_per_s": speed["tokens"] / (time.perf_counter() - speed["t0"])}
        speed.update(tokens=0, t0=time.perf_counter())
        return row, {**state, "loss_window": {"loss": 0.0, "steps": 0}}

    spec = LoopSpec(stage, pc.steps, pc.checkpoint_every, postfix=("loss",),
                    state={"loss_window": {"loss": 0.0, "steps": 0}})
    history = run_loop(ctx, spec, trainable, step_fn)
    return {"steps": pc.steps, "final_loss": history[-1]["loss"] if history else None,
            "parameters": sum(p.numel() for p in trainable.model.parameters()),
            "checkpoint": str(latest_step_dir(rd.checkpoints(stage)))}
