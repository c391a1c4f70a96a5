"""Stage `pretrain`: train the tiny base model on next-token loss over the pretraining split.

Resumes from ``checkpoints/pretrain/latest`` if a previous run was interrupted (same data order, exact RNG).
"""

from __future__ import annotations

import logging
import time

from rpt.model.cpu_compat import shims_suspended
from rpt.model.forward import lm_loss
from rpt.runtime import dp_mean
from rpt.tokenizer import Tokenizer
from rpt.train import checkpoint, preemption
from rpt.train.optim import build_trainable
from rpt.train.pretrain_data import batch_for_step, build_gpt_dataset

log = logging.getLogger(__name__)


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    pc = cfg.pretrain
    rd.require("prep")
    tok = Tokenizer.from_run(rd)
    trainable = build_trainable(cfg.model, cfg.model.vocab_size or tok.vocab_size, rt, pc, pc.steps)
    ckpt_dir = rd.checkpoints("pretrain")
    start, wandb_id = checkpoint.resume_or_init(ckpt_dir, trainable)
    dataset = build_gpt_dataset(str(rd.data / "pretrain"), tok, cfg.data.seq_length,
                                pc.steps * pc.micro_batch_size * rt.dp_size, cfg.run.seed, str(rd.data / "cache"))
    metrics = ctx.metrics(wandb_id=wandb_id, resume_step=start)
    trainable.model.train()
    loss_sum, since_log, t0, tokens_seen, last = 0.0, 0, time.perf_counter(), 0, {}
    bar = ctx.progress(range(start, pc.steps), desc="pretrain", initial=start, total=pc.steps)
    for step in bar:
        batch = batch_for_step(dataset, step, pc.micro_batch_size, rt.dp_rank, rt.dp_size).to(rt.device)
        trainable.zero_grad()
        with shims_suspended():
            loss = lm_loss(trainable.model, batch)
            loss.backward()
        applied, grad_norm = trainable.step()
        loss_sum += dp_mean(loss.item())
        since_log += 1
        tokens_seen += batch[:, 1:].numel() * rt.dp_size
        if (step + 1) % pc.log_every == 0 or step + 1 == pc.steps:
            dt = time.perf_counter() - t0
            last = {"loss": loss_sum / since_log, "grad_norm": grad_norm, "lr": trainable.lr, "tokens_per_s": tokens_seen / dt}
            metrics.log(step + 1, last)
            bar.set_postfix(loss=f"{last['loss']:.3f}")
            loss_sum, since_log, t0, tokens_seen = 0.0, 0, time.perf_counter(), 0
        preemption.end_of_step("pretrain", step + 1, pc.steps, pc.checkpoint_every, ckpt_dir, trainable, metrics)
    metrics.close()
    return {"steps": pc.steps, "final_loss": last.get("loss"), "checkpoint": str(checkpoint.latest_step_dir(ckpt_dir))}
