"""The whole (TP = 1) state of a tensor-parallel megatron ``GPTModel``, gathered from its shards, for consumers
that hold the model unsharded (vLLM's colocated engine: ``rpt.rollout.vllm_engine``).

Why our own: megatron-core gathers shards only through dist-checkpointing (a disk round trip). The layout is the
one ``rpt.model.hf.hf_to_megatron`` shards into, read back from the attributes megatron puts on every sharded
parameter (``tensor_model_parallel``, ``partition_dim``): concatenation along the partition dimension in rank
order, except SwiGLU's ``linear_fc1``, which holds [gate | up] per rank and so is regrouped into [all gates | all
ups]. QKV is fused per query group and groups are split contiguously, so it concatenates as is.
"""

from __future__ import annotations

import torch

from rpt.distributed import tp_all_gather, tp_rank


def _whole(name: str, param: torch.Tensor) -> torch.Tensor:
    parts = tp_all_gather(param)
    if len(parts) == 1:
        return param.detach()
    if name.endswith("mlp.linear_fc1.weight"):
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(parts, dim=param.partition_dim)


def full_state(model) -> dict[str, torch.Tensor] | None:
    """The unsharded parameters by megatron name on the tensor-parallel group's first rank (None on the others);
    a collective over the group: every rank of it calls this together."""
    state = {}
    for name, param in model.named_parameters():
        state[name] = _whole(name, param) if getattr(param, "tensor_model_parallel", False) else param.detach()
    return state if tp_rank() == 0 else None
