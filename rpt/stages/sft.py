"""Stage `sft`: the supervised baseline beside downstream `rl` ("RL squeezes, SFT expands", arXiv 2509.21128) —
cross entropy on demonstrations, from the same checkpoint as `rl` and with the same budget, so base → {rl, sft}
(and rpt → rl) compare.

Demonstrations (``sft.source``, built by ``rpt.tasks.demonstrations``):
- ``demo``: worked solutions of the downstream task's own training questions (``rl_task``'s reasoning-gym chain
  expressions), ``sft.orders`` distinct orders of operations per question (left to right, from the right, pairs
  first, reordered terms, ...), each a prompt (the task's ``prompt_ids``: the prompt `rl` rolls out from) and the
  response a policy should write after it (the worked steps, ``</think> \\boxed{answer}``, EOS);
- ``jsonl``: prompt/response records of local files (``sft.path``; bad records counted and skipped).

Budget: ``sft.steps`` (default ``rl.steps``) optimizer steps of ``rl.prompts_per_step × rollout.group_size``
sequences each — as many sequences as an `rl` step updates on. The comparison is at equal steps and sequences
(like `cnt` beside `rpt`); SFT spends far fewer FLOPs (no rollouts). Step k takes sequences ``k·n … (k+1)·n − 1``
of a fresh seeded permutation of the demonstrations per epoch (a pure function of the step, so a resumed run
draws exactly the same batches); under data parallelism each rank takes every ``dp_size``-th of them.

Loss: token-mean cross entropy over the step's response tokens (prompt tokens and padding masked), over the whole
data-parallel batch: each micro-batch's summed loss is divided by the step's global response-token count (and
scaled by ``dp_size``, since megatron DDP averages gradients over ranks), so micro-batching and the rank split
leave the gradient unchanged. Every rank takes the same collectives and the optimizer step, whatever its share.
Metrics rows: ``loss`` (that token mean), ``grad_norm``, ``lr``, ``tokens`` (response tokens trained, all ranks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rpt.checkpoint import latest_step_dir
from rpt.distributed import dp_sum
from rpt.model.footprint import model_vocab
from rpt.model.forward import position_ids
from rpt.model.loading import checkpoint_dir
from rpt.tasks.base import epoch_order
from rpt.tasks.demonstrations import Demonstration, chain_demonstrations, file_demonstrations
from rpt.tasks.downstream import build_downstream_task
from rpt.tokenizer import Tokenizer
from rpt.train.loop import LoopSpec, run_loop
from rpt.train.optim import build_trainable

log = logging.getLogger(__name__)


def pack(demos: list[Demonstration], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``tokens [b, T]`` (prompt + response) and ``loss_mask [b, T-1]`` aligned with
    ``tokens[:, 1:]``: True where the predicted token is a response token."""
    longest = max(len(d.prompt) + len(d.response) for d in demos)
    tokens = torch.full((len(demos), longest), max(pad_id, 0), dtype=torch.long)
    mask = torch.zeros(len(demos), longest - 1, dtype=torch.bool)
    for i, d in enumerate(demos):
        n_prompt, n = len(d.prompt), len(d.prompt) + len(d.response)
        tokens[i, :n] = torch.tensor(d.prompt + d.response)
        mask[i, max(n_prompt - 1, 0):n - 1] = True  # position t predicts token t + 1
    return tokens, mask


def response_loss_sum(model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of the masked next tokens (megatron's vocab-parallel loss, float32)."""
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    per_token = model(inputs, position_ids(inputs), None, labels=labels).float()
    return (per_token * mask).sum()


def build_demonstrations(cfg, tok) -> list[Demonstration]:
    sc, limit = cfg.sft, cfg.model.max_position_embeddings
    if sc.source == "jsonl":
        demos, _ = file_demonstrations(sc, tok, limit)
        return demos
    if cfg.rl_task.source != "reasoning_gym":
        raise ValueError("sft.source=demo renders worked solutions of rl_task's reasoning-gym chain expressions; "
                         "with rl_task.source=dataset use sft.source=jsonl sft.path=...")
    task = build_downstream_task(cfg.rl_task, tok, "train", cfg.run.seed)
    demos, skipped = chain_demonstrations(task, sc.orders, limit)
    if skipped:
        log.warning("sft: skipped %s of %d training questions", dict(skipped), len(task))
    if not demos:
        raise ValueError(f"sft.source=demo: no training question of rl_task ({cfg.rl_task.task}) is a +/- chain "
                         f"expression to render (skipped: {dict(skipped)})")
    log.info("sft: %d demonstrations of %d questions (up to %d orders of operations each)", len(demos), len(task),
             sc.orders)
    return demos


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    sc = cfg.sft
    steps = sc.steps if sc.steps is not None else cfg.rl.steps
    per_step = cfg.rl.prompts_per_step * cfg.rollout.group_size
    if sc.init_from in ("pretrain", "rpt", "rlp", "cnt") and not Path(sc.init_from).is_dir():
        rd.require(sc.init_from)
    tok = Tokenizer.from_run(rd)
    demos = build_demonstrations(cfg, tok)
    trainable = build_trainable(cfg.model, model_vocab(cfg.model, tok.vocab_size), rt, sc, steps)

    def step_fn(step: int, state: dict) -> tuple[dict, dict]:
        batch = [demos[i] for i in epoch_order(len(demos), step, per_step, cfg.run.seed)][rt.dp_rank::rt.dp_size]
        total = dp_sum(float(sum(len(d.response) for d in batch)))
        trainable.zero_grad()
        loss_sum = 0.0
        for start in range(0, len(batch), sc.micro_batch_size):
            tokens, mask = pack(batch[start:start + sc.micro_batch_size], tok.pad_id)
            loss = response_loss_sum(trainable.model, tokens.to(rt.device), mask.to(rt.device))
            (loss * (rt.dp_size / max(total, 1.0))).backward()
            loss_sum += float(loss.detach())
        _, grad_norm = trainable.step()
        row = {"loss": dp_sum(loss_sum) / max(total, 1.0), "grad_norm": grad_norm, "lr": trainable.lr,
               "tokens": total}
        return row, state

    spec = LoopSpec("sft", steps, sc.checkpoint_every, checkpoint_dir(rd, sc.init_from), postfix=("loss",))
    history = run_loop(ctx, spec, trainable, step_fn)
    return {"steps": steps, "sequences_per_step": per_step, "demonstrations": len(demos), "source": sc.source,
            "init_from": sc.init_from, "final_loss": history[-1]["loss"] if history else None,
            "checkpoint": str(latest_step_dir(rd.checkpoints("sft")))}
