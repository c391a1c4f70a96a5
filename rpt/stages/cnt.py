"""Stage `cnt`: the continual next-token baseline, from the checkpoint `rpt` starts from, on the data `rpt` trains on.

Two objectives (``cnt.objective``): ``positions``, the RPT paper's baseline, cross entropy on the token at each
selected training position (``rpt.prompts_per_step × rollout.group_size`` positions a step, as many sequences as an
RPT step updates on); ``documents``, continued pretraining: next-token loss on every token of the RPT-train
documents (never a validation or test document), in windows of ``data.seq_length``.

Two budgets (``cnt.match``): ``steps``, as many steps as `rpt` (far fewer FLOPs than RPT, which also samples), or
``flops``, as many training FLOPs as the finished `rpt` stage spent. Both sides are counted per token at the same
model size, so the parameter count cancels: RPT spends 2 per rollout token to sample it, 2 more for each extra
forward (the old-policy pass unless the update's forward is reused, the reference pass with a KL term) and 6 per
update epoch; CNT spends 6 per trained token. Rollout tokens count every sampled sequence's prompt, although a
group's shared prompt is computed once, so RPT's side is an upper bound and CNT gets at least RPT's compute.
Attention FLOPs are left out on both sides (short contexts here).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import torch

from data_prep.doc_splits import TRAIN, read_doc_splits
from data_prep.indexed import IndexedDocs, write_indexed
from rpt.checkpoint import latest_step_dir
from rpt.distributed import dp_mean
from rpt.errors import Refusal
from rpt.metrics import read_metrics
from rpt.model.footprint import model_vocab
from rpt.model.forward import last_token_logits, lm_loss
from rpt.model.loading import checkpoint_dir
from rpt.positions import Positions
from rpt.tasks.next_token import NextTokenTask
from rpt.tokenizer import Tokenizer
from rpt.train.loop import LoopSpec, run_loop
from rpt.train.optim import build_trainable
from rpt.train.pretrain_data import batch_for_step, build_gpt_dataset

log = logging.getLogger(__name__)


def next_token_loss(model, items, device) -> torch.Tensor:
    logits = last_token_logits(model, [it["context"] for it in items], device)
    targets = torch.tensor([it["target"][0] for it in items], device=device)
    return torch.nn.functional.cross_entropy(logits, targets)


def rpt_flops_per_token(cfg) -> float:
    """RPT's training FLOPs per rollout token, in units of the parameter count (see the module docstring)."""
    extra = 0 if cfg.algo.reuse_update_forward and cfg.rpt.updates_per_rollout() == 1 else 1
    extra += 1 if cfg.algo.kl_coef else 0
    return 2.0 + 2.0 * extra + 6.0 * cfg.rpt.ppo_epochs


def matched_steps(cfg, rd, tokens_per_step: int) -> tuple[int, dict]:
    """CNT's step count under ``cnt.match``, and the accounting behind it."""
    if cfg.cnt.match == "steps":
        return cfg.rpt.steps, {"match": "steps"}
    rows = read_metrics(rd.metrics, "rpt")
    if not rd.is_done("rpt") or not rows:
        raise Refusal("cnt: cnt.match=flops matches the finished `rpt` stage's compute; run `rpt rpt` first (or "
                      "cnt.match=steps)")
    rollout_tokens = float(sum(r.get("rollout_tokens") or 0.0 for r in rows))
    cnt_tokens = rollout_tokens * rpt_flops_per_token(cfg) / 6.0
    steps = max(1, math.ceil(cnt_tokens / tokens_per_step))
    return steps, {"match": "flops", "rpt_rollout_tokens": rollout_tokens,
                   "rpt_flops_per_param": rollout_tokens * rpt_flops_per_token(cfg),
                   "cnt_flops_per_param": 6.0 * steps * tokens_per_step}


def training_documents(rd, vocab_size: int):
    """The RPT-train documents as their own indexed dataset (``data/rpt_train``), made once from ``data/rpt``."""
    prefix = rd.data / "rpt_train"
    if not (rd.data / "rpt_train.manifest.json").exists():
        rpt = IndexedDocs(rd.data / "rpt")
        keep = np.flatnonzero(read_doc_splits(rd.data, len(rpt)) == TRAIN)
        write_indexed(prefix, ((rpt.doc_ids[i], rpt.tokens(int(i)).tolist()) for i in keep), vocab_size)
    return prefix


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    lc, cc = cfg.rpt, cfg.cnt
    rd.require("select")
    tok = Tokenizer.from_run(rd)
    if cc.objective == "positions":
        positions = Positions.of_run(rd, "train")
        task = NextTokenTask.from_rollout(positions, tok, cfg.rollout)
        per_step = lc.prompts_per_step * cfg.rollout.group_size
        tokens_per_step = per_step * positions.max_context_tokens  # an upper bound per step
    else:
        if rt.is_main:
            training_documents(rd, tok.vocab_size)
        ctx.barrier()
        tokens_per_step = cc.micro_batch_size * rt.dp_size * cfg.data.seq_length
    steps, accounting = matched_steps(cfg, rd, tokens_per_step)
    lr = lc.lr if cc.lr is None else cc.lr
    min_lr = lc.min_lr if cc.lr is None else cc.lr
    trainable = build_trainable(cfg.model, model_vocab(cfg.model, tok.vocab_size), rt,
                                replace(lc, lr=lr, min_lr=min_lr), steps)
    if cc.objective == "documents":
        dataset = build_gpt_dataset(str(rd.data / "rpt_train"), tok, cfg.data.seq_length,
                                    steps * cc.micro_batch_size * rt.dp_size, cfg.run.seed, str(rd.data / "cache"))

    def step_fn(step: int, state: dict) -> tuple[dict, dict]:
        trainable.zero_grad()
        if cc.objective == "documents":
            batch = batch_for_step(dataset, step, cc.micro_batch_size, rt.dp_rank, rt.dp_size).to(rt.device)
            loss = lm_loss(trainable.model, batch)
        else:
            items = task.items_for_step(step, per_step, cfg.run.seed)[rt.dp_rank::rt.dp_size]
            loss = next_token_loss(trainable.model, items, rt.device)
        loss.backward()
        _, grad_norm = trainable.step()
        return {"loss": dp_mean(loss.item()), "grad_norm": grad_norm, "lr": trainable.lr}, state

    log.info("cnt: %s objective, %d steps (%s)", cc.objective, steps, accounting)
    spec = LoopSpec("cnt", steps, lc.checkpoint_every, checkpoint_dir(rd, lc.init_from), postfix=("loss",))
    history = run_loop(ctx, spec, trainable, step_fn)
    return {"steps": steps, "objective": cc.objective, **accounting,
            "final_loss": history[-1]["loss"] if history else None,
            "checkpoint": str(latest_step_dir(rd.checkpoints("cnt")))}

