"""Every collective rpt issues itself (megatron's own stay inside megatron), in one place and on the right device.

Two rules hold here so the callers need not think about them:
- **Device.** NCCL reduces only CUDA tensors and gloo only CPU tensors, so every buffer is made on
  ``reduce_device()`` (the current CUDA device under NCCL, the CPU otherwise) and results come back as Python
  numbers or on the caller's device.
- **Group.** Data-parallel statistics reduce over megatron's data-parallel group: tensor-parallel ranks hold the
  same data, and the world group would count it once per TP rank. Decisions that every rank must share (stop for
  preemption) reduce over the world.

Every function is a collective: every rank of the group must call it, whatever its data (a rank with no rows
passes empty tensors or zeros). A world of one (or no process group) returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _dp_group():
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group() if parallel_state.model_parallel_is_initialized() else None


def _size(group) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def reduce_device() -> torch.device:
    """Where collective buffers live for the backend in use: CUDA under NCCL, CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: list[float], op, group) -> list[float]:
    if _size(group) == 1:
        return list(values)
    buf = torch.tensor(values, dtype=torch.float64, device=reduce_device())
    dist.all_reduce(buf, op=op, group=group)
    return buf.tolist()


def dp_sum(*values: float) -> float | list[float]:
    """Sum of per-rank numbers over the data-parallel group (one collective for all of them)."""
    out = _all_reduce([float(v) for v in values], dist.ReduceOp.SUM, _dp_group())
    return out[0] if len(values) == 1 else out


def dp_max(value: float) -> float:
    """Maximum of a per-rank number over the data-parallel group."""
    return _all_reduce([float(value)], dist.ReduceOp.MAX, _dp_group())[0]


def dp_mean_of(values: torch.Tensor, empty: float | None = 0.0) -> float | None:
    """Mean of the elements of ``values`` over the whole data-parallel batch (what one process would compute);
    ``empty`` when the batch has none."""
    total, count = dp_sum(float(values.float().sum()), float(values.numel()))
    return total / count if count else empty


def dp_mean(value: float) -> float:
    """Mean of a per-rank number over the data-parallel ranks."""
    return dp_sum(value) / _size(_dp_group())


def dp_gather(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The 1-D ``values`` of every data-parallel rank, concatenated in rank order (same result on every rank),
    and the offset of this rank's values in it. Ranks may hold different counts, including none."""
    group = _dp_group()
    n = _size(group)
    if n == 1:
        return values, 0
    device = reduce_device()
    local = torch.tensor([values.numel()], dtype=torch.int64, device=device)
    counted = [torch.empty_like(local) for _ in range(n)]
    dist.all_gather(counted, local, group=group)
    counts = [int(c) for c in counted]
    padded = torch.zeros(max(max(counts), 1), dtype=values.dtype, device=device)
    padded[:values.numel()] = values.to(device)
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    rank = dist.get_rank(group)
    whole = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(values.device)
    return whole, sum(counts[:rank])


def gather_objects(obj, data_parallel: bool = True) -> list:
    """Every rank's picklable ``obj`` in rank order, on every rank (over the data-parallel group, or the world)."""
    group = _dp_group() if data_parallel else None
    n = _size(group)
    if n == 1:
        return [obj]
    out = [None] * n
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_from_main(obj):
    """Rank 0's picklable ``obj`` on every rank of the world."""
    if _size(None) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def world_any(flag: bool) -> bool:
    """True on every rank when any rank of the world passes True."""
    return bool(_all_reduce([1.0 if flag else 0.0], dist.ReduceOp.MAX, None)[0])


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group() if parallel_state.model_parallel_is_initialized() else None


def tp_rank() -> int:
    """This rank's place in its tensor-parallel group (0 without one)."""
    group = _tp_group()
    return dist.get_rank(group) if _size(group) > 1 else 0


def tp_any(flag: bool) -> bool:
    """True on every rank of the tensor-parallel group when any of its ranks passes True."""
    return bool(_all_reduce([1.0 if flag else 0.0], dist.ReduceOp.MAX, _tp_group())[0])


def tp_all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor-parallel rank's ``tensor`` (same shape on each), in rank order, on the caller's device."""
    group = _tp_group()
    n = _size(group)
    if n == 1:
        return [tensor]
    local = tensor.detach().to(reduce_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(n)]
    dist.all_gather(parts, local, group=group)
    return [p.to(tensor.device) for p in parts]


def tp_broadcast_object(obj):
    """The tensor-parallel group's first rank's picklable ``obj`` on every rank of the group."""
    from megatron.core import parallel_state

    group = _tp_group()
    if _size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=parallel_state.get_tensor_model_parallel_src_rank(), group=group)
    return box[0]
