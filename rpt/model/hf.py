"""Hugging Face interop: import Qwen2 / Qwen2.5 / Llama checkpoints (``config.json`` + safetensors) into the
megatron ``GPTModel``, with tensor-parallel sharding, and export a model back to that format so vLLM, lm-eval
or verl load it.

Why hand-written: megatron-core 0.16 ships no HF converter for its local layer spec (Megatron-Bridge is a
separate, GPU-only project). The mapping is small and exact:
- QKV: megatron fuses q, k, v per query group: for each group g, [q heads of g | k_g | v_g] along the output dim;
- SwiGLU: megatron's ``linear_fc1`` is [gate | up] per tensor-parallel rank;
- column-parallel weights split on dim 0 (per group for QKV, per half for fc1), row-parallel on dim 1,
  embedding and output layer on the vocabulary dim.
Every HF tensor must land somewhere: one the mapping does not consume (an o_proj bias; an lm_head that differs from
the embedding under ``tie_word_embeddings=true``) is refused, as are config settings the model cannot express
(``hf_config``).
Export writes the model's own dtype, sharded like ``save_pretrained`` (huggingface_hub's ``save_torch_state_dict``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from rpt.model.hf_config import SUPPORTED, hf_config_from_model, model_config_from_hf
from rpt.model.hf_tokenizer import write_hf_tokenizer

__all__ = ["HF_TOKENIZER_FILES", "SUPPORTED", "export_hf", "hf_to_megatron", "import_hf", "megatron_to_hf",
           "model_config_from_hf", "shard_bytes"]

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # buffers some older checkpoints saved
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)?\s*$", re.IGNORECASE)


def shard_bytes(size: str | int) -> int:
    """``hf.max_shard_size`` in bytes: an int, or a number with KB/MB/GB/TB (powers of 1000, as transformers)."""
    m = _SIZE.match(str(size))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"hf.max_shard_size must be a positive size like 500MB or 5GB (or bytes), got {size!r}")
    unit = (m.group(2) or "B").upper()
    return int(float(m.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit])


def _load_hf_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():  # only the shards the index names (a directory may hold stale ones)
        files = [hf_dir / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {hf_dir}")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return {k.removeprefix("model."): v for k, v in tensors.items() if not _IGNORED.search(k)}


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
    _check_embedding_tie(tensors, mc["tie_embeddings"])
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
    unused = sorted(set(tensors) - _consumed(mc))
    if unused:
        raise ValueError(f"HF import: the model cannot express these HF tensors (refusing to drop them): "
                         f"{unused[:6]}{' ...' if len(unused) > 6 else ''}")
    return out


def _check_embedding_tie(tensors: dict[str, torch.Tensor], tied: bool) -> None:
    head = tensors.get("lm_head.weight")
    if not tied and head is None:
        raise ValueError("HF import: tie_word_embeddings=false but the checkpoint has no lm_head.weight")
    if tied and head is not None and not torch.equal(head, tensors["embed_tokens.weight"]):
        raise ValueError("HF import: tie_word_embeddings=true but lm_head.weight differs from embed_tokens.weight; "
                         "the config does not match the weights")


def _consumed(mc: dict) -> set[str]:
    """The HF tensor names ``hf_to_megatron`` reads (``model.`` prefix removed)."""
    qkv = [f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")[:1 + mc["qkv_bias"]]]
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                 "mlp.up_proj.weight", "mlp.down_proj.weight", "self_attn.o_proj.weight", *qkv]
    return {"embed_tokens.weight", "norm.weight", "lm_head.weight",
            *(f"layers.{i}.{n}" for i in range(mc["num_layers"]) for n in per_layer)}


def megatron_to_hf(state: dict[str, torch.Tensor], mc: dict, to_host: bool = True) -> dict[str, torch.Tensor]:
    """HF tensors from a full (TP=1) megatron ``GPTModel.state_dict()``: host copies for a file (``to_host``), or
    tensors left on the model's device for an in-memory consumer (vLLM's reload, which copies them into its own
    parameters: no device-host round trip and no second copy of the model)."""
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
    if not to_host:
        return {k: v.detach().contiguous() for k, v in out.items()}
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}  # host copies: GPU memory stays


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
              tokenizer_dir: str | Path | None = None, max_shard_size: str | int = "5GB",
              special_ids: dict | None = None) -> Path:
    """Write a TP=1 model as an HF checkpoint: ``config.json``, safetensors in the model's own dtype (sharded as
    ``model-0000x-of-0000n.safetensors`` + index above ``max_shard_size``), ``generation_config.json`` and the
    tokenizer files of ``tokenizer_dir``. ``special_ids``: bos/eos/pad token ids (``bos_token_id``, ...)."""
    from huggingface_hub import save_torch_state_dict

    out_dir = Path(out_dir)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    dtype = state["embedding.word_embeddings.weight"].dtype
    ids = {k: v for k, v in (special_ids or {}).items() if v is not None and v >= 0}
    config = hf_config_from_model(mc, architecture, dtype, ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = megatron_to_hf(state, mc)
    if SUPPORTED[architecture] == "llama" and mc["qkv_bias"]:  # Llama's attention_bias biases o_proj too: zeros
        for i in range(mc["num_layers"]):
            o_proj = tensors[f"model.layers.{i}.self_attn.o_proj.weight"]
            tensors[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(o_proj.shape[0], dtype=o_proj.dtype)
    save_torch_state_dict(tensors, out_dir, max_shard_size=shard_bytes(max_shard_size), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {}
    if tokenizer_dir is not None:
        for name in (*HF_TOKENIZER_FILES, "tokenizer.model"):  # generation_config.json is written below
            if (Path(tokenizer_dir) / name).exists():
                shutil.copy(Path(tokenizer_dir) / name, out_dir / name)
        if not (Path(tokenizer_dir) / "tokenizer.json").exists() and (Path(tokenizer_dir) / "tokenizer.model").exists():
            write_hf_tokenizer(Path(tokenizer_dir) / "tokenizer.model", out_dir)
        imported = Path(tokenizer_dir) / "generation_config.json"  # the imported model's sampling defaults
        generation = json.loads(imported.read_text()) if imported.exists() else {}
    (out_dir / "generation_config.json").write_text(json.dumps({**ids, **generation}, indent=2) + "\n")
    return out_dir
