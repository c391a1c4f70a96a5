"""Stage `hf_export`: write a stage's latest checkpoint (``hf.source``: rpt, rl_rpt, pretrain, …) as an HF
checkpoint (config.json + model.safetensors + tokenizer files) that vLLM, lm-eval or verl load. Runs at TP=1;
dist-checkpoints saved under any layout load here."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rpt.model.hf import export_hf
from rpt.model.loading import load_eval_model
from rpt.tokenizer import Tokenizer


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    if cfg.run.tensor_parallel != 1:
        raise ValueError("hf_export runs with run.tensor_parallel=1 (the checkpoint reshards on load)")
    vocab = cfg.model.vocab_size or Tokenizer.from_run(rd).vocab_size
    model = load_eval_model(cfg.model, rt, rd, cfg.hf.source, vocab)
    mc = {**asdict(cfg.model), "vocab_size": vocab}
    out = Path(cfg.hf.export_dir or rd.path / "hf" / cfg.hf.source)
    if rt.is_main:
        export_hf(model, mc, out, cfg.hf.architecture, rd.tokenizer if rd.tokenizer.exists() else None)
    ctx.barrier()
    return {"source": cfg.hf.source, "out": str(out)}
