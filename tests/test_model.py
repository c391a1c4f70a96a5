"""Model build options that must not change any number."""

import torch

from rpt.model.forward import full_logits


def test_fused_swiglu_changes_no_number(runtime):
    """model.fused_swiglu (megatron's compiled SwiGLU) gives the unfused model's logits and gradients."""
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    models = []
    for fused in (False, True):
        cpu_compat.seed_all(2)
        models.append(build_model(ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4,
                                              num_query_groups=2, fused_swiglu=fused), 50))
    models[1].load_state_dict(models[0].state_dict())
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = [full_logits(m, tokens) for m in models]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
    for out in logits:
        out.square().mean().backward()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=name)
