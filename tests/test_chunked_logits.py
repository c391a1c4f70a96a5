"""Log-probs, entropies and top-k entropy computed a chunk of tokens at a time (``rpt.model.forward``) must give the
numbers and gradients of the one-pass computation over the full logits, on every path that uses them."""

import pytest
import torch

from rpt.model.forward import (
    final_hidden_states,
    full_logits,
    last_token_logits,
    logprobs_and_entropy,
    sequence_logprobs,
    sequence_topk_entropy,
    token_logprobs,
    topk_entropy,
    unwrap,
)

VOCAB = 50


def _model(seed=4):
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    cpu_compat.seed_all(seed)
    return build_model(ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4,
                                   num_query_groups=2), VOCAB)


def _tokens(rows=3, length=11, seed=0):
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_grads_equal(got, want):
    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_chunked_logprobs_match_one_pass_values_and_gradients(runtime, chunk):
    model = _model()
    tokens = _tokens()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    where = torch.rand(targets.shape, generator=torch.Generator().manual_seed(2)) < 0.7
    weights = torch.randn(targets.shape, generator=torch.Generator().manual_seed(3))
    results = []
    for chunk_tokens in (0, chunk):
        model.zero_grad()
        logp, entropy = sequence_logprobs(model, inputs, targets, 0.7, where, chunk_tokens)
        ((logp - 0.3 * entropy) * weights).sum().backward()
        results.append((logp.detach(), entropy.detach(), _grads(model)))
    (logp0, ent0, grads0), (logp1, ent1, grads1) = results
    torch.testing.assert_close(logp1, logp0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-6, rtol=1e-5)
    assert bool((logp1[~where] == 0).all()) and bool((ent1[~where] == 0).all())
    _assert_grads_equal(grads1, grads0)


def test_one_pass_path_is_todays_full_logits_computation(runtime):
    """chunk_tokens=0 (the reference above) equals log_softmax over ``full_logits`` at the temperature."""
    model = _model()
    tokens = _tokens()
    want_logp, want_ent = logprobs_and_entropy(full_logits(model, tokens[:, :-1]) / 0.7, tokens[:, 1:])
    for chunk_tokens in (0, 5):
        logp, entropy = sequence_logprobs(model, tokens[:, :-1], tokens[:, 1:], 0.7, chunk_tokens=chunk_tokens)
        torch.testing.assert_close(logp, want_logp, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(entropy, want_ent, atol=1e-6, rtol=1e-5)


def test_gradient_of_logprob_alone_and_of_entropy_alone(runtime):
    """Each output's closed-form gradient on its own (the other output's gradient is zero)."""
    model = _model()
    tokens = _tokens(rows=2, length=9)
    for pick in (0, 1):
        results = []
        for chunk_tokens in (0, 3):
            model.zero_grad()
            hidden = final_hidden_states(model, tokens[:, :-1]).transpose(0, 1).reshape(-1, 32)
            hidden.retain_grad()
            out = token_logprobs(unwrap(model), hidden, tokens[:, 1:].reshape(-1), 1.3, chunk_tokens)
            out[pick].sum().backward()
            results.append((hidden.grad.clone(), _grads(model)))
        torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
        _assert_grads_equal(results[1][1], results[0][1])


def test_chunk_size_sets_how_many_output_layer_calls(runtime):
    """The option changes the computation: ceil(tokens / chunk) output-layer calls forward and again backward."""
    model = _model()
    tokens = _tokens(rows=2, length=11)  # 20 predicted tokens
    calls = []
    handle = unwrap(model).output_layer.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        for chunk_tokens, expected in ((0, [20]), (6, [6, 6, 6, 2]), (20, [20])):
            calls.clear()
            logp, _ = sequence_logprobs(model, tokens[:, :-1], tokens[:, 1:], 1.0, chunk_tokens=chunk_tokens)
            forward_calls = [c for c in calls if c]  # the model's own call sees an empty input
            assert forward_calls == expected
            calls.clear()
            logp.sum().backward()
            assert [c for c in calls if c] == ([] if chunk_tokens == 0 else expected)  # recomputed per chunk
    finally:
        handle.remove()


def test_topk_entropy_and_last_token_logits_match_full_logits(runtime):
    model = _model()
    tokens = _tokens(rows=3, length=13)
    with torch.inference_mode():
        logits = full_logits(model, tokens)
        for chunk_tokens in (0, 5):
            torch.testing.assert_close(sequence_topk_entropy(model, tokens, 8, chunk_tokens), topk_entropy(logits, 8),
                                       atol=1e-6, rtol=1e-5)
        contexts = [tokens[0, :4].tolist(), tokens[1].tolist(), tokens[2, :1].tolist()]
        last = last_token_logits(model, contexts, tokens.device)
        for i, context in enumerate(contexts):
            torch.testing.assert_close(last[i], full_logits(model, torch.tensor([context]))[0, -1],
                                       atol=1e-5, rtol=1e-5)


def test_entropy_scoring_uses_the_chunked_path(runtime):
    """`select`'s scoring (data_prep.entropy) gives the full-logits top-k entropy, window by window."""
    import numpy as np

    from data_prep.entropy import score_documents

    model = _model()
    docs = [np.random.default_rng(i).integers(0, VOCAB, size=n) for i, n in enumerate((9, 4, 12))]
    scored = score_documents(model, docs, seq_length=8, top_k=6, batch_size=2, device=torch.device("cpu"))
    with torch.inference_mode():
        for doc, got in zip(docs, scored, strict=True):
            for start in range(0, len(doc), 8):
                window = torch.from_numpy(doc[start:start + 8]).unsqueeze(0)
                want = topk_entropy(full_logits(model, window), 6)[0, :-1].numpy()
                np.testing.assert_allclose(got[start + 1:start + window.shape[1]], want, atol=1e-5, rtol=1e-5)
