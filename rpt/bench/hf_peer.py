"""The HF ``transformers`` peer of `rpt bench`: the benchmarked megatron model's own weights exported through
``rpt.model.hf`` and loaded as an HF causal LM, so the peer runs the same architecture on the same numbers."""

from __future__ import annotations

import tempfile


def hf_peer(model, mc: dict, dtype):
    """The same weights in an HF transformers model (None if transformers is not installed)."""
    try:
        import transformers
    except ImportError:
        return None
    from rpt.model.hf import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        # Qwen2's layout always has QKV biases: a bias-free model (SmolLM2, Llama) goes out as Llama
        export_hf(model, mc, tmp, "Qwen2ForCausalLM" if mc["qkv_bias"] else "LlamaForCausalLM")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=dtype)
    return hf.to(next(model.parameters()).device)
