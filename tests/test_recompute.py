"""``model.recompute`` (none | selective | full) reaches megatron's ``TransformerConfig`` and trades memory for
compute without changing the math: autograd keeps fewer bytes of activations for the backward pass, while the loss
and every gradient stay equal. On CPU this runs megatron's ``tensor_parallel.checkpoint`` behind cpu_compat (F)."""

from dataclasses import replace

import pytest
import torch

from rpt.config import ModelConfig

CFG = ModelConfig(num_layers=3, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2)


def _train_pass(recompute: str, vocab: int):
    """Loss, gradients and the bytes autograd saved for backward, for one forward + backward of a fresh model."""
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    cpu_compat.seed_all(0)
    model = build_model(replace(CFG, recompute=recompute), vocab)
    model.train()
    tokens = torch.randint(0, vocab, (2, 96), generator=torch.Generator().manual_seed(1))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens, torch.arange(96).expand(2, 96), None, labels=tokens).float().mean()
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)


def test_recompute_saves_less_and_changes_nothing_else(runtime):
    from rpt.model.build import transformer_config

    assert transformer_config(CFG, torch.float32).recompute_granularity is None
    assert transformer_config(replace(CFG, recompute="full"), torch.float32).recompute_granularity == "full"
    runs = {mode: _train_pass(mode, 97) for mode in ("none", "selective", "full")}
    loss, grads, saved = runs["none"]
    assert runs["full"][2] < runs["selective"][2] < saved
    for mode in ("selective", "full"):
        assert runs[mode][0] == pytest.approx(loss, abs=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(runs[mode][1][name], grad, atol=1e-6, rtol=1e-5, msg=f"{mode}: {name}")


def test_recompute_mode_is_validated():
    with pytest.raises(ValueError, match="model.recompute"):
        ModelConfig(recompute="layers")
