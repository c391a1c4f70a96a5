"""Trainable model bundle: megatron DDP + megatron optimizer (Adam or SGD, fp32 main params) + LR/WD scheduler.

Pretrain, RPT and RL all train through this one bundle, so data parallelism, gradient clipping, mixed precision
on GPU and checkpoint layout are identical across stages. ``model.distributed_optimizer`` switches both the DDP
wrapper (contiguous grad buffers reduce-scattered) and the optimizer to megatron's distributed optimizer: each
data-parallel rank keeps Adam's moments and the fp32 main weights of its 1/DP shard only (ZeRO-1); the training
math is unchanged (tested equal to the plain optimizer) and its checkpoints reshard (``rpt.checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from rpt.model.build import build_model
from rpt.model.cpu_compat import megatron_cuda_calls
from rpt.model.footprint import check_fits
from rpt.model.weight_writes import note_weights_written


@dataclass
class Trainable:
    model: DistributedDataParallel  # call it like the GPTModel; `.module` is the GPTModel
    optimizer: object  # megatron MegatronOptimizer
    scheduler: OptimizerParamScheduler
    extra_models: dict = field(default_factory=dict)  # name -> GPTModel saved in every checkpoint (SDPO's EMA teacher)

    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def step(self) -> tuple[bool, float]:
        """Finish the gradient all-reduce, clip, step; returns (applied, grad_norm).

        The schedule advances *before* the update, so optimizer step k (from 0) uses lr(k + 1): megatron's lr(0) is
        init_lr = 0 during warm-up, which would make the first update a no-op, and the last step lands exactly on
        min_lr. ``lr`` then reports the rate the last update used, and the scheduler's count equals the number
        of completed steps (what a checkpoint stores)."""
        with megatron_cuda_calls():
            self.model.finish_grad_sync()
            self.scheduler.step(increment=1)
            applied, grad_norm, _ = self.optimizer.step()
        note_weights_written(self.model)  # the event a rollout engine resyncs on (rpt/model/weight_writes.py)
        return bool(applied), float(grad_norm or 0.0)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


@megatron_cuda_calls
def build_trainable(model_cfg, vocab_size: int, rt, train_cfg, total_steps: int) -> Trainable:
    if model_cfg.distributed_optimizer and train_cfg.optimizer != "adam":
        raise ValueError(f"optimizer={train_cfg.optimizer} cannot run with model.distributed_optimizer=true (megatron "
                         f"shards Adam only)")
    check_fits(model_cfg, vocab_size, rt, training=True, optimizer=train_cfg.optimizer)
    gpt = build_model(model_cfg, vocab_size, rt.dtype)
    ddp = DistributedDataParallel(
        gpt.config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                      use_distributed_optimizer=model_cfg.distributed_optimizer),
        gpt,
    )
    bf16 = rt.dtype == torch.bfloat16
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer=train_cfg.optimizer, sgd_momentum=0.9, lr=train_cfg.lr, min_lr=train_cfg.min_lr,
                        weight_decay=train_cfg.weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
                        clip_grad=train_cfg.clip_grad, bf16=bf16, params_dtype=rt.dtype,
                        use_distributed_optimizer=model_cfg.distributed_optimizer),
        [ddp],
    )
    warmup = min(train_cfg.warmup_steps, max(total_steps - 1, 0))
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else train_cfg.lr, max_lr=train_cfg.lr, min_lr=train_cfg.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=max(total_steps, warmup + 1), lr_decay_style="cosine",
        start_wd=train_cfg.weight_decay, end_wd=train_cfg.weight_decay, wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant")
    return Trainable(ddp, optimizer, scheduler)
