"""Build a Qwen2-style megatron-core ``GPTModel`` (RMSNorm, SwiGLU, RoPE, grouped-query attention) from config.

The layer spec is megatron-core's local (no Transformer Engine) GPT spec with our SDPA core attention swapped in,
so the same model runs on CPU (gloo, float32) and GPU (nccl, bf16) and shards under megatron's tensor parallelism.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from rpt.model.attention import SDPAttention

log = logging.getLogger(__name__)


def recompute_options(recompute: str) -> dict:
    """megatron's activation-recomputation fields for ``model.recompute``: ``selective`` recomputes the core
    attention of every layer; ``full`` keeps only each layer's input and recomputes the whole layer in backward."""
    if recompute == "none":
        return {}
    if recompute == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    if recompute == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    raise ValueError(f"model.recompute must be one of none | selective | full, got {recompute!r}")


def transformer_config(model_cfg, dtype: torch.dtype) -> TransformerConfig:
    """Map our model config (``conf/model/*.yaml``) to megatron's ``TransformerConfig``."""
    from megatron.core import parallel_state

    return TransformerConfig(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.ffn_hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.num_query_groups,
        kv_channels=model_cfg.hidden_size // model_cfg.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=model_cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=model_cfg.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model_cfg.init_std,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        sequence_parallel=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        bias_activation_fusion=model_cfg.fused_swiglu,  # torch.compile'd SwiGLU forward/backward
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        use_cpu_initialization=not torch.cuda.is_available(),
        **recompute_options(model_cfg.recompute),
    )


def layer_spec():
    """megatron-core's local GPT layer spec with SDPA core attention."""
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def _as_dict(model_cfg) -> dict:
    return dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)


def build_model(model_cfg, vocab_size: int, dtype: torch.dtype = torch.float32) -> GPTModel:
    """Instantiate the GPT model on the current device (CPU or the current CUDA device)."""
    config = transformer_config(model_cfg, dtype)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(),
        vocab_size=vocab_size,
        max_sequence_length=model_cfg.max_position_embeddings,
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=model_cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=model_cfg.rotary_base,
        parallel_output=True,
    )
    model.rpt_shape = {**_as_dict(model_cfg), "vocab_size": vocab_size}  # what the model was built as (vLLM's
    # colocated engine writes its HF config from it: rpt.rollout.vllm_engine)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built GPTModel: %.2fM parameters (this rank)", n_params / 1e6)
    return model
