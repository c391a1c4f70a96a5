"""Stage `hf_import`: bring an HF checkpoint (Qwen2 / Qwen2.5 / Llama: config.json + safetensors + tokenizer
files) into the run as a megatron dist-checkpoint under ``checkpoints/hf/``, sharded for the current tensor-
parallel layout, and its ``tokenizer.json`` into ``tokenizer/``. Later stages start from it with
``rpt.init_from=hf`` or ``rl_task.train_on=[hf]``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from megatron.core import parallel_state

from rpt.checkpoint import save_model_only
from rpt.model.build import build_model
from rpt.model.hf import import_hf, model_config_from_hf


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    if not cfg.hf.path:
        raise ValueError("hf_import needs hf.path=/path/to/hf/checkpoint")
    src = Path(cfg.hf.path)
    hf_cfg = model_config_from_hf(src)
    ours = {k: getattr(cfg.model, k, None) for k in hf_cfg if k != "name"}
    mismatched = {k: (ours[k], hf_cfg[k]) for k in ours if ours[k] is not None and ours[k] != hf_cfg[k]}
    if mismatched:
        raise ValueError(f"model config does not match {src}/config.json (ours, theirs): {mismatched}; "
                         f"pick the matching model=... entry or override these fields")
    model = build_model(cfg.model, hf_cfg["vocab_size"], rt.dtype)
    import_hf(model, src, parallel_state.get_tensor_model_parallel_rank(),
              parallel_state.get_tensor_model_parallel_world_size())
    step_dir = save_model_only(rd.checkpoints("hf"), model)
    if rt.is_main:
        rd.tokenizer.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / name).exists():
                shutil.copy(src / name, rd.tokenizer / name)
    ctx.barrier()
    return {"source": str(src), "checkpoint": str(step_dir), "model": hf_cfg}
