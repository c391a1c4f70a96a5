"""Stage `hf_export`: write a stage's latest checkpoint (``hf.source``: rpt, rl_rpt, pretrain, …) as an HF
checkpoint that vLLM, lm-eval, verl or ``transformers`` load: config.json, safetensors in the run's dtype (bf16 on
GPU), sharded above ``hf.max_shard_size``, generation_config.json with the tokenizer's bos/eos ids, and the
tokenizer files. Runs at TP=1; dist-checkpoints saved under any layout load here. ``export_checkpoint`` is the
export itself, which `lm_eval` also makes on the fly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rpt.model.footprint import model_vocab
from rpt.model.hf import export_hf
from rpt.model.hf_config import export_architecture
from rpt.model.loading import load_eval_model
from rpt.tokenizer import Tokenizer


def export_checkpoint(ctx, source: str, out: Path) -> Path:
    """``source``'s latest checkpoint as an HF checkpoint in ``out`` (every rank loads, rank 0 writes)."""
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    if cfg.run.tensor_parallel != 1:
        raise ValueError(f"rpt {ctx.stage} exports with run.tensor_parallel=1 (the checkpoint reshards on load)")
    tok = Tokenizer.from_run(rd)
    vocab = model_vocab(cfg.model, tok.vocab_size)
    model = load_eval_model(cfg.model, rt, rd, source, vocab)
    mc = {**asdict(cfg.model), "vocab_size": vocab}
    if rt.is_main:
        special_ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
        architecture = export_architecture(cfg.hf.architecture, rd, cfg.model.qkv_bias)
        export_hf(model, mc, out, architecture, rd.tokenizer, cfg.hf.max_shard_size, special_ids)
    ctx.barrier()
    return out


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    out = export_checkpoint(ctx, cfg.hf.source, Path(cfg.hf.export_dir or rd.path / "hf" / cfg.hf.source))
    return {"source": cfg.hf.source, "out": str(out), "dtype": str(rt.dtype).removeprefix("torch.")}
