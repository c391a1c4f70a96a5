"""The shared-prompt forward (one prompt copy per GRPO group) must give the plain forward's numbers."""

import pytest
import torch

from rpt.model.forward import full_logits, logprobs_and_entropy
from rpt.model.shared_prefix import group_layout, shared_prompt_logprobs

PAD = 0


def _model(seed=3, vocab=60):
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    cpu_compat.seed_all(seed)
    return build_model(ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4,
                                   num_query_groups=2), vocab)


def _ragged_groups(prompt_lens, response_lens, group_size, vocab=60, seed=0):
    """Right-padded [prompt | response] rows; each group of ``group_size`` rows shares its prompt."""
    g = torch.Generator().manual_seed(seed)
    width = max(prompt_lens) + max(response_lens)
    n = len(response_lens)
    tokens = torch.full((n, width), PAD, dtype=torch.long)
    response = torch.zeros(n, width, dtype=torch.bool)
    lens = []
    for i, r in enumerate(response_lens):
        p = prompt_lens[i // group_size]
        if i % group_size == 0:
            prompt = torch.randint(1, vocab, (p,), generator=g)
        tokens[i, :p] = prompt
        tokens[i, p:p + r] = torch.randint(1, vocab, (r,), generator=g)
        response[i, p:p + r] = True
        lens.append(p)
    return tokens, torch.tensor(lens), response


def _plain(model, tokens, response, temperature):
    logp, entropy = logprobs_and_entropy(full_logits(model, tokens[:, :-1]) / temperature, tokens[:, 1:])
    keep = response[:, 1:]
    return logp * keep, entropy * keep


@pytest.mark.parametrize("chunk_tokens", [0, 3])  # all logits at once; the output layer 3 tokens at a time
@pytest.mark.parametrize("prompt_lens,response_lens", [
    ([5, 9, 1], [3, 1, 4, 4, 2, 2]),  # ragged prompts (one of a single token) and responses
    ([7, 7], [6, 6, 6, 6]),  # no padding at all
])
def test_shared_prompt_forward_matches_plain_forward(runtime, prompt_lens, response_lens, chunk_tokens):
    G = 2
    model = _model()
    tokens, plens, response = _ragged_groups(prompt_lens, response_lens, G)
    layout = group_layout(tokens, plens, response.sum(1), G, PAD)
    assert layout is not None
    assert layout.tokens.numel() < tokens.numel() or len(set(response_lens)) == 1
    weights = torch.randn(tokens.shape[0], tokens.shape[1] - 1, generator=torch.Generator().manual_seed(1))
    results = []
    for shared in (False, True):
        model.zero_grad()
        width = tokens.shape[1] - 1
        logp, entropy = (shared_prompt_logprobs(model, layout, tokens.shape[0], width, 0.8, chunk_tokens) if shared
                         else _plain(model, tokens, response, 0.8))
        ((logp + 0.1 * entropy) * weights).sum().backward()
        results.append((logp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]))
    (logp0, ent0, grads0), (logp1, ent1, grads1) = results
    torch.testing.assert_close(logp1, logp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    assert bool((logp1[~response[:, 1:]] == 0).all())
    for (name, _), a, b in zip(model.named_parameters(), grads0, grads1, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


def test_rows_that_are_not_groups_get_no_shared_layout(runtime):
    tokens, plens, response = _ragged_groups([4, 6], [2, 3, 2, 3], 2)
    assert group_layout(tokens, plens, response.sum(1), 3, PAD) is None  # 4 rows are not groups of 3
    assert group_layout(tokens, plens, response.sum(1), 1, PAD) is None  # nothing to share
    different = tokens.clone()
    different[1, 0] = (different[1, 0] % 59) + 1  # second member of group 0 has another prompt
    assert group_layout(different, plens, response.sum(1), 2, PAD) is None
