"""Stage `hf_import`: bring an HF checkpoint (Qwen2 / Qwen2.5 / Llama: config.json + safetensors + tokenizer files; a
GGUF file or a hub id, ``rpt.model.hf_source``) into the run as a megatron dist-checkpoint under ``checkpoints/hf/``,
sharded for the current tensor-parallel layout, and its tokenizer files (tokenizer.json, tokenizer_config.json with
the special tokens and chat template, generation_config.json) into ``tokenizer/``. Later stages start from it with
``rpt.init_from=hf`` or ``rl_task.train_on=[hf]``.

The run's ``model`` shape comes from config.json (``rpt.model.hf_source.adopt_checkpoint_shape``, before the stage
runs: it joins the run's remembered overrides, so every later stage builds it and the run's saved config tells the
truth); a chosen ``model`` setting that contradicts the checkpoint is refused there, and checked again here. The
shape read is recorded in ``checkpoints/hf/model.json``, which later stages check their ``model`` against.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from megatron.core import parallel_state

from rpt.checkpoint import save_model_only
from rpt.errors import Refusal
from rpt.model.build import build_model
from rpt.model.footprint import check_fits
from rpt.model.hf import HF_TOKENIZER_FILES, import_hf
from rpt.model.hf_config import model_config_from_hf, overrides_for, shape_mismatches, write_shape_record
from rpt.model.hf_source import resolve_source
from rpt.tokenizer import HFTokenizer

log = logging.getLogger(__name__)


def check_model_config(model_cfg, hf_cfg: dict, tokenizer_vocab: int, src: Path) -> None:
    """Refuse a ``model`` config that differs from the checkpoint's, naming each field with both values."""
    if tokenizer_vocab > hf_cfg["vocab_size"]:
        raise Refusal(f"{src}: the tokenizer defines {tokenizer_vocab} ids but the model has only "
                         f"{hf_cfg['vocab_size']} embedding rows")
    diffs = shape_mismatches(model_cfg, tokenizer_vocab, hf_cfg)
    if diffs:
        listed = ", ".join(f"model.{f}={ours} (config) vs {theirs} (config.json)" for f, ours, theirs in diffs)
        raise Refusal(f"the model config does not match the checkpoint: {listed}. Pick the matching model=... "
                      f"entry or pass {overrides_for(hf_cfg)}")
    if model_cfg.max_position_embeddings < hf_cfg["max_position_embeddings"]:
        log.warning("model.max_position_embeddings=%d, shorter than the checkpoint's %d (as chosen): prompts and "
                    "responses are capped there, and the export says %d", model_cfg.max_position_embeddings,
                    hf_cfg["max_position_embeddings"], model_cfg.max_position_embeddings)


def copy_tokenizer(src: Path, dest: Path) -> None:
    """The checkpoint's tokenizer files (not a sentencepiece tokenizer.model: the run reads tokenizer.json)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*HF_TOKENIZER_FILES, "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)


def run(ctx) -> dict:
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    src = resolve_source(str(cfg.hf.path), rd.path)  # adopt_checkpoint_shape refused a missing hf.path
    hf_cfg = model_config_from_hf(src)
    if not (src / "tokenizer.json").exists():
        raise Refusal(f"no tokenizer.json in {src}; hf_import needs the checkpoint's tokenizer files")
    check_model_config(cfg.model, hf_cfg, HFTokenizer(src / "tokenizer.json").vocab_size, src)
    if rt.is_main:
        copy_tokenizer(src, rd.tokenizer)
    check_fits(cfg.model, hf_cfg["vocab_size"], rt, training=False)
    model = build_model(cfg.model, hf_cfg["vocab_size"], rt.dtype)
    import_hf(model, src, parallel_state.get_tensor_model_parallel_rank(),
              parallel_state.get_tensor_model_parallel_world_size())
    step_dir = save_model_only(rd.checkpoints("hf"), model)
    if rt.is_main:
        write_shape_record(rd, src, hf_cfg, json.loads((src / "config.json").read_text())["architectures"][0])
    ctx.barrier()
    return {"source": str(src), "checkpoint": str(step_dir), "model": hf_cfg}
