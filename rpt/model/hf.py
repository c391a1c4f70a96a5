"""Hugging Face interop: import Qwen2 / Qwen2.5 / Llama checkpoints (``config.json`` + safetensors) into the
megatron ``GPTModel``, with tensor-parallel sharding, and export a model back to that format so vLLM, lm-eval
or verl load it.

Why hand-written: megatron-core 0.16 ships no HF converter for its local layer spec (Megatron-Bridge is a
separate, GPU-only project). The mapping is small and exact:
- QKV: megatron fuses q, k, v per query group: for each group g, [q heads of g | k_g | v_g] along the output dim;
- SwiGLU: megatron's ``linear_fc1`` is [gate | up] per tensor-parallel rank;
- column-parallel weights split on dim 0 (per group for QKV, per half for fc1), row-parallel on dim 1,
  embedding and output layer on the vocabulary dim.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SUPPORTED = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}


def model_config_from_hf(hf_dir: str | Path) -> dict:
    """Our ``model`` config fields from an HF ``config.json``."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        raise ValueError(f"unsupported architecture {arch!r}; supported: {sorted(SUPPORTED)}")
    return {
        "name": cfg.get("_name_or_path") or arch,
        "num_layers": cfg["num_hidden_layers"],
        "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg["intermediate_size"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_query_groups": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        "norm_epsilon": cfg["rms_norm_eps"],
        "qkv_bias": SUPPORTED[arch] == "qwen2" or bool(cfg.get("attention_bias", False)),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "rotary_base": int(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000))),
        "max_position_embeddings": cfg.get("max_position_embeddings", 4096),
        "vocab_size": cfg["vocab_size"],
    }


def _load_hf_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {hf_dir}")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return {k.removeprefix("model."): v for k, v in tensors.items()}


def _shard(t: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    return torch.chunk(t, world, dim=dim)[rank].contiguous()


def _fuse_qkv(q, k, v, heads: int, groups: int) -> torch.Tensor:
    d = q.shape[0] // heads
    per = heads // groups
    parts = []
    for g in range(groups):
        parts += [q[g * per * d:(g + 1) * per * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
    return torch.cat(parts, dim=0)


def _split_qkv(qkv, heads: int, groups: int):
    d = qkv.shape[0] // (heads + 2 * groups)
    per = heads // groups
    q, k, v = [], [], []
    for g in range(groups):
        block = qkv[g * (per + 2) * d:(g + 1) * (per + 2) * d]
        q.append(block[:per * d])
        k.append(block[per * d:(per + 1) * d])
        v.append(block[(per + 1) * d:])
    return torch.cat(q), torch.cat(k), torch.cat(v)


def hf_to_megatron(tensors: dict[str, torch.Tensor], mc: dict, tp_rank: int = 0, tp_size: int = 1) -> dict:
    """Megatron ``GPTModel.state_dict()`` entries (this TP rank's shards) from HF tensors."""
    heads, groups = mc["num_attention_heads"], mc["num_query_groups"]
    out = {"embedding.word_embeddings.weight": _shard(tensors["embed_tokens.weight"], 0, tp_rank, tp_size),
           "decoder.final_layernorm.weight": tensors["norm.weight"]}
    if not mc["tie_embeddings"]:
        out["output_layer.weight"] = _shard(tensors["lm_head.weight"], 0, tp_rank, tp_size)
    for i in range(mc["num_layers"]):
        h, m = f"layers.{i}.", f"decoder.layers.{i}."
        att = h + "self_attn."
        out[m + "input_layernorm.weight"] = tensors[h + "input_layernorm.weight"]
        qkv = _fuse_qkv(tensors[att + "q_proj.weight"], tensors[att + "k_proj.weight"],
                        tensors[att + "v_proj.weight"], heads, groups)
        out[m + "self_attention.linear_qkv.weight"] = _shard(qkv, 0, tp_rank, tp_size)
        if mc["qkv_bias"]:
            bias = _fuse_qkv(tensors[att + "q_proj.bias"], tensors[att + "k_proj.bias"],
                             tensors[att + "v_proj.bias"], heads, groups)
            out[m + "self_attention.linear_qkv.bias"] = _shard(bias, 0, tp_rank, tp_size)
        out[m + "self_attention.linear_proj.weight"] = _shard(tensors[att + "o_proj.weight"], 1, tp_rank, tp_size)
        out[m + "pre_mlp_layernorm.weight"] = tensors[h + "post_attention_layernorm.weight"]
        gate = _shard(tensors[h + "mlp.gate_proj.weight"], 0, tp_rank, tp_size)
        up = _shard(tensors[h + "mlp.up_proj.weight"], 0, tp_rank, tp_size)
        out[m + "mlp.linear_fc1.weight"] = torch.cat([gate, up], dim=0)
        out[m + "mlp.linear_fc2.weight"] = _shard(tensors[h + "mlp.down_proj.weight"], 1, tp_rank, tp_size)
    return out


def megatron_to_hf(state: dict[str, torch.Tensor], mc: dict) -> dict[str, torch.Tensor]:
    """HF tensors from a full (TP=1) megatron ``GPTModel.state_dict()``."""
    heads, groups = mc["num_attention_heads"], mc["num_query_groups"]
    out = {"model.embed_tokens.weight": state["embedding.word_embeddings.weight"],
           "model.norm.weight": state["decoder.final_layernorm.weight"]}
    out["lm_head.weight"] = state.get("output_layer.weight", state["embedding.word_embeddings.weight"])
    for i in range(mc["num_layers"]):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        att = h + "self_attn."
        out[h + "input_layernorm.weight"] = state[m + "input_layernorm.weight"]
        q, k, v = _split_qkv(state[m + "self_attention.linear_qkv.weight"], heads, groups)
        out.update({att + "q_proj.weight": q, att + "k_proj.weight": k, att + "v_proj.weight": v})
        if mc["qkv_bias"]:
            qb, kb, vb = _split_qkv(state[m + "self_attention.linear_qkv.bias"], heads, groups)
            out.update({att + "q_proj.bias": qb, att + "k_proj.bias": kb, att + "v_proj.bias": vb})
        out[att + "o_proj.weight"] = state[m + "self_attention.linear_proj.weight"]
        out[h + "post_attention_layernorm.weight"] = state[m + "pre_mlp_layernorm.weight"]
        gate, up = torch.chunk(state[m + "mlp.linear_fc1.weight"], 2, dim=0)
        out.update({h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up,
                    h + "mlp.down_proj.weight": state[m + "mlp.linear_fc2.weight"]})
    if mc["tie_embeddings"]:
        out.pop("lm_head.weight")
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def import_hf(model, hf_dir: str | Path, tp_rank: int = 0, tp_size: int = 1) -> None:
    """Load HF weights into a megatron ``GPTModel`` built from ``model_config_from_hf(hf_dir)``."""
    mc = model_config_from_hf(hf_dir)
    shards = hf_to_megatron(_load_hf_tensors(Path(hf_dir)), mc, tp_rank, tp_size)
    own = model.state_dict()
    for key, value in shards.items():
        if key not in own:
            raise KeyError(f"HF import: megatron model has no parameter {key}")
        if own[key].shape != value.shape:
            raise ValueError(f"HF import: {key} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}")
    missing = [k for k in own if k not in shards and not k.endswith("_extra_state")]
    if missing:
        raise KeyError(f"HF import: no HF weight for {missing[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in shards.items()}, strict=True)


def export_hf(model, mc: dict, out_dir: str | Path, architecture: str = "Qwen2ForCausalLM",
              tokenizer_dir: str | Path | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files) for a TP=1 model."""
    if architecture not in SUPPORTED:
        raise ValueError(f"unsupported architecture {architecture!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    save_file(megatron_to_hf(state, mc), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": [architecture], "model_type": SUPPORTED[architecture],
        "num_hidden_layers": mc["num_layers"], "hidden_size": mc["hidden_size"],
        "intermediate_size": mc["ffn_hidden_size"], "num_attention_heads": mc["num_attention_heads"],
        "num_key_value_heads": mc["num_query_groups"], "rms_norm_eps": mc["norm_epsilon"],
        "rope_theta": mc["rotary_base"], "tie_word_embeddings": mc["tie_embeddings"],
        "max_position_embeddings": mc["max_position_embeddings"], "vocab_size": mc["vocab_size"],
        "hidden_act": "silu", "torch_dtype": "float32",
    }
    if SUPPORTED[architecture] == "llama":
        config["attention_bias"] = mc["qkv_bias"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                (out_dir / f.name).write_bytes(f.read_bytes())
    return out_dir
