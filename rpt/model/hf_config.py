"""Hugging Face ``config.json`` ↔ our model config, and the imported shape a run must keep.

Reading refuses every setting the converter (``rpt/model/hf.py``) cannot express in megatron's local GPT layer
(plain RoPE, full causal attention, SwiGLU, RMSNorm, bias only on QKV) instead of silently dropping it: a model
that loads with a setting dropped scores different logits and nothing would say so.

``hf_import`` records the shape it read in ``checkpoints/hf/model.json``; ``check_imported_shape`` compares a
stage's ``model`` config against that record before a model is built, so a different shape fails with the field,
both values and the fix, not with a megatron tensor-shape mismatch deep in checkpoint loading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rpt.errors import Refusal

log = logging.getLogger(__name__)

SUPPORTED = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}  # architecture -> model_type
SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "norm_epsilon", "qkv_bias", "tie_embeddings", "rotary_base", "vocab_size")  # weights or their meaning
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
RECORD = "model.json"  # under checkpoints/hf/


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {hf_dir} (hf.path must be an HF checkpoint directory)")
    return json.loads(path.read_text(encoding="utf-8"))


def unsupported_settings(cfg: dict) -> list[str]:
    """What in an HF config the converter cannot express (empty: convertible)."""
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        return [f"architecture {arch!r} (the converter supports {', '.join(sorted(SUPPORTED))}: RMSNorm, SwiGLU, "
                f"RoPE, grouped-query attention)"]
    out = []
    for key in ("rope_scaling", "rope_parameters"):
        rope = cfg.get(key)
        if rope and (rope.get("rope_type") or rope.get("type") or "default") != "default":
            out.append(f"{key}={rope} (only plain RoPE is built; scaled positions would be wrong)")
    heads = cfg["num_attention_heads"]
    if cfg["hidden_size"] % heads:
        out.append(f"hidden_size={cfg['hidden_size']} not divisible by num_attention_heads={heads}")
    elif cfg.get("head_dim") not in (None, cfg["hidden_size"] // heads):
        out.append(f"head_dim={cfg['head_dim']} != hidden_size/num_attention_heads={cfg['hidden_size'] // heads}")
    if cfg.get("use_sliding_window"):
        out.append(f"use_sliding_window=true (sliding_window={cfg.get('sliding_window')}; only full attention)")
    sliding = [t for t in cfg.get("layer_types") or [] if t != "full_attention"]
    if sliding:
        out.append(f"layer_types with {sorted(set(sliding))} (only full attention)")
    if cfg.get("hidden_act", "silu") != "silu":
        out.append(f"hidden_act={cfg['hidden_act']!r} (only silu: SwiGLU)")
    if SUPPORTED[arch] == "llama" and cfg.get("attention_bias"):
        out.append("attention_bias=true (bias on o_proj too; the model has bias on QKV only)")
    if cfg.get("mlp_bias"):
        out.append("mlp_bias=true (the MLP has no biases)")
    return out


def model_config_from_hf(hf_dir: str | Path) -> dict:
    """Our ``model`` config fields from an HF ``config.json``; refuses what the converter does not support."""
    cfg = read_hf_config(hf_dir)
    refused = unsupported_settings(cfg)
    if refused:
        raise ValueError(f"{Path(hf_dir) / 'config.json'}: unsupported by rpt's converter: " + "; ".join(refused))
    arch = cfg["architectures"][0]
    rope_theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000))
    return {
        "name": cfg.get("_name_or_path") or arch,
        "num_layers": cfg["num_hidden_layers"],
        "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg["intermediate_size"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_query_groups": cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        "norm_epsilon": cfg["rms_norm_eps"],
        "qkv_bias": SUPPORTED[arch] == "qwen2" or bool(cfg.get("attention_bias", False)),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "rotary_base": int(rope_theta),
        "max_position_embeddings": cfg.get("max_position_embeddings", 4096),
        "vocab_size": cfg["vocab_size"],
    }


def hf_config_from_model(mc: dict, architecture: str, dtype: torch.dtype, special_ids: dict) -> dict:
    """An HF ``config.json`` for a model of our config ``mc`` stored in ``dtype``; ``special_ids`` holds
    ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` (None where the tokenizer has none)."""
    if architecture not in SUPPORTED:
        raise ValueError(f"unsupported architecture {architecture!r}; supported: {sorted(SUPPORTED)}")
    if SUPPORTED[architecture] == "qwen2" and not mc["qkv_bias"]:
        raise ValueError("Qwen2ForCausalLM always has QKV bias; export a model with qkv_bias=false as "
                         "hf.architecture=LlamaForCausalLM")
    config = {
        "architectures": [architecture], "model_type": SUPPORTED[architecture],
        "num_hidden_layers": mc["num_layers"], "hidden_size": mc["hidden_size"],
        "intermediate_size": mc["ffn_hidden_size"], "num_attention_heads": mc["num_attention_heads"],
        "num_key_value_heads": mc["num_query_groups"], "head_dim": mc["hidden_size"] // mc["num_attention_heads"],
        "rms_norm_eps": mc["norm_epsilon"], "rope_theta": float(mc["rotary_base"]), "rope_scaling": None,
        "tie_word_embeddings": mc["tie_embeddings"], "max_position_embeddings": mc["max_position_embeddings"],
        "vocab_size": mc["vocab_size"], "hidden_act": "silu", "attention_dropout": 0.0,
        "torch_dtype": DTYPE_NAMES[dtype], "dtype": DTYPE_NAMES[dtype], **special_ids,
    }
    if SUPPORTED[architecture] == "llama":  # QKV bias: Llama's attention_bias, with an o_proj bias of zeros (export_hf)
        config.update(attention_bias=mc["qkv_bias"], mlp_bias=False)
    else:
        config.update(use_sliding_window=False, sliding_window=None)
    return config


def record_path(rd) -> Path:
    return rd.checkpoints("hf") / RECORD


def write_shape_record(rd, source: str | Path, mc: dict, architecture: str) -> Path:
    """Record the imported model's shape and architecture for the run's later stages (written by ``hf_import``)."""
    from rpt.rundir import write_json

    path = record_path(rd)
    write_json(path, {"source": str(source), "architecture": architecture, "model": mc})
    return path


def export_architecture(chosen: str | None, rd, qkv_bias: bool) -> str:
    """The architecture ``hf_export`` writes: the one chosen, else the imported model's, else Llama for a run with
    the sentencepiece tokenizer, else Qwen2 for a model with QKV bias and Llama without.

    Why Llama for sentencepiece: transformers (5.x) loads its own Qwen2Tokenizer for every ``qwen2`` checkpoint,
    whatever ``tokenizer_config.json`` names, and that byte-level tokenizer cannot read a sentencepiece vocabulary
    (it dropped every space); for ``llama`` it honours the exported ``tokenizer.json``. A model with QKV bias is
    exported as Llama with ``attention_bias`` and an o_proj bias of zeros: the same function."""
    sentencepiece = (rd.tokenizer / "tokenizer.model").exists() and not (rd.tokenizer / "tokenizer.json").exists()
    if chosen:
        if sentencepiece and SUPPORTED.get(chosen) == "qwen2":
            raise Refusal(f"hf.architecture={chosen} cannot carry this run's sentencepiece tokenizer: transformers "
                          f"loads Qwen2's own byte-level tokenizer for every qwen2 checkpoint; export as "
                          f"hf.architecture=LlamaForCausalLM (the default for such a run)")
        return chosen
    path = record_path(rd)
    if path.exists():
        imported = json.loads(path.read_text(encoding="utf-8")).get("architecture")
        if imported:
            return imported
    if sentencepiece:
        return "LlamaForCausalLM"
    return "Qwen2ForCausalLM" if qkv_bias else "LlamaForCausalLM"


def shape_mismatches(model_cfg, vocab_size: int | None, record: dict) -> list[tuple[str, object, object]]:
    """(field, ours, imported) for every shape field where ``model_cfg`` differs from the imported record."""
    ours = {f: getattr(model_cfg, f) for f in SHAPE_FIELDS}
    ours["vocab_size"] = model_cfg.vocab_size or vocab_size
    return [(f, ours[f], record[f]) for f in SHAPE_FIELDS if ours[f] != record[f]]


def overrides_for(mc: dict) -> str:
    """The ``model.<field>=<value>`` overrides that give a stage the shape ``mc``."""
    return " ".join(f"model.{f}={str(mc[f]).lower() if isinstance(mc[f], bool) else mc[f]}" for f in SHAPE_FIELDS)


def check_imported_shape(model_cfg, rd, vocab_size: int | None = None) -> None:
    """Refuse a ``model`` config whose shape differs from the run's ``hf_import`` (no-op in a run without one).
    ``vocab_size``: the vocabulary the model would be built with when ``model_cfg.vocab_size`` is unset (None:
    the run's tokenizer's)."""
    path = record_path(rd)
    if not path.exists():
        return
    record = json.loads(path.read_text(encoding="utf-8"))
    if model_cfg.vocab_size is None and vocab_size is None:
        from rpt.tokenizer import load_tokenizer

        vocab_size = load_tokenizer(rd.tokenizer).vocab_size
    diffs = shape_mismatches(model_cfg, vocab_size, record["model"])
    if diffs:
        listed = ", ".join(f"model.{f}={ours} here but {theirs} in the import" for f, ours, theirs in diffs)
        raise ValueError(f"this run imported {record['source']} (shape recorded in {path}) and the model config "
                         f"differs: {listed}. Run every stage with the imported shape: the model=... entry hf_import "
                         f"ran with, or {overrides_for(record['model'])}")
