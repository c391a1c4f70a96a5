"""Token-budget micro-batches (``max_tokens_per_micro_batch``): how rows are cut, and that the cut (and the
output-layer chunking) changes how the update runs but none of its numbers: the loss and the gradients the
optimizer receives, to float tolerance (never the weights after an Adam step, whose first move is about
lr x sign(gradient): a near-zero gradient's sign follows summation order, which differs between CPUs)."""

import logging

import pytest
import torch

from rpt.train.micro_batches import micro_batches, padded_tokens, token_budget_micro_batches

VOCAB = 40
G = 2


def test_padded_tokens_counts_the_forwards_layout():
    prompts, responses = torch.tensor([5, 5, 3, 3]), torch.tensor([2, 4, 1, 1])
    assert padded_tokens(prompts, responses, G, shared=True) == 2 * (5 + 2 * 4)  # groups x (P + G x R)
    assert padded_tokens(prompts, responses, G, shared=False) == 4 * 9  # rows x longest sequence
    assert padded_tokens(prompts[:0], responses[:0], G, shared=True) == 0


def test_budget_cuts_between_groups_and_a_large_group_runs_alone(caplog):
    prompts = torch.tensor([4, 4, 4, 4, 10, 10, 2, 2])
    responses = torch.tensor([3, 1, 2, 2, 5, 5, 1, 1])
    # per group alone (shared): 4 + 2*3 = 10, 4 + 2*2 = 8, 10 + 2*5 = 20, 2 + 2*1 = 4; groups 0+1: 2 x (4 + 2*3) = 20
    with caplog.at_level(logging.WARNING, logger="rpt.train.micro_batches"):
        assert token_budget_micro_batches(prompts, responses, range(8), 20, G, shared=True) == [
            range(0, 4), range(4, 6), range(6, 8)]
        assert not caplog.text
        assert token_budget_micro_batches(prompts, responses, range(8), 18, G, shared=True) == [
            range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert "exceeds max_tokens_per_micro_batch=18" in caplog.text and "rows 4-5" in caplog.text
    assert token_budget_micro_batches(prompts, responses, range(8), 1000, G, shared=True) == [range(0, 8)]
    assert token_budget_micro_batches(prompts, responses, range(8), 1, G, shared=True) == [
        range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert token_budget_micro_batches(prompts, responses, range(2, 6), 16, G, shared=False) == [
        range(2, 4), range(4, 6)]
    assert token_budget_micro_batches(prompts, responses, range(0), 16, G, shared=True) == []
    assert micro_batches(range(8), 4, G) == [range(0, 4), range(4, 8)]


def _rollouts(prompt_lens, response_lens, seed=0):
    from rpt.rollout.engine import Rollouts
    from tests.test_shared_prefix import _ragged_groups

    tokens, lens, mask = _ragged_groups(prompt_lens, response_lens, G, vocab=VOCAB, seed=seed)
    n, width = tokens.shape
    return Rollouts(tokens, lens, mask, torch.zeros(n, width), torch.zeros(n, dtype=torch.bool))


def _train_once(runtime, monkeypatch, share_prompt, max_tokens, chunk_tokens):
    """One update from fixed weights; returns (micro-batch row counts, stats, old log-probs, the gradients the
    optimizer stepped with)."""
    from rpt.config import AlgoConfig, ModelConfig, TrainLoopConfig
    from rpt.model import cpu_compat
    from rpt.train import rl_update
    from rpt.train.optim import build_trainable

    monkeypatch.undo()  # the plain trainer_forward, not the previous call's counting wrapper
    cpu_compat.seed_all(5)
    loop = TrainLoopConfig(lr=1e-2, min_lr=1e-2, warmup_steps=0)
    trainable = build_trainable(ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4,
                                            num_query_groups=2), VOCAB, runtime, loop, 10)
    algo = AlgoConfig(share_prompt=share_prompt)
    rollouts = _rollouts([6, 3, 9], [4, 2, 1, 3, 5, 5])
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    forward = rl_update.ForwardSettings(0.9, 64, max_tokens, chunk_tokens)
    old = rl_update.policy_values(trainable.model, rollouts, G, share_prompt, forward)
    batch = rl_update.build_batch(rollouts, adv, old, algo, G, torch.Generator().manual_seed(0))
    sizes = []
    plain_forward = rl_update.trainer_forward
    monkeypatch.setattr(rl_update, "trainer_forward", lambda model, ro, rows, *a: sizes.append(len(rows))
                        or plain_forward(model, ro, rows, *a))
    grads, step = [], trainable.step
    trainable.step = lambda: grads.append({name: p.main_grad.detach().clone() for name, p in
                                           trainable.model.module.named_parameters()}) or step()
    result = rl_update.update(trainable, batch, algo, forward, 1, 1, 5, 1)
    assert len(grads) == 1  # one mini-batch: one optimizer step
    return sizes, result.stats, old, grads[0]


@pytest.mark.parametrize("share_prompt", [True, False])
def test_token_budget_changes_the_micro_batches_not_the_numbers(runtime, monkeypatch, share_prompt):
    rows_sizes, rows_stats, rows_old, rows_grads = _train_once(runtime, monkeypatch, share_prompt, None, 0)
    tok_sizes, tok_stats, tok_old, tok_grads = _train_once(runtime, monkeypatch, share_prompt, 20, 3)
    assert rows_sizes == [6]  # micro_batch_size=64 rows: the whole mini-batch in one forward
    assert tok_sizes == [2, 2, 2]  # 20 tokens: every group alone (the smallest lays out 3 + 2*3 = 9 tokens)
    torch.testing.assert_close(tok_old.logp, rows_old.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tok_old.entropy, rows_old.entropy, atol=1e-5, rtol=1e-5)
    for key in ("loss", "grad_norm", "kl_to_old", "clip_frac_low"):
        assert tok_stats[key] == pytest.approx(rows_stats[key], rel=1e-4, abs=1e-6), key
    assert rows_stats["grad_norm"] > 0
    assert rows_grads.keys() == tok_grads.keys() and rows_grads
    for name, want in rows_grads.items():
        torch.testing.assert_close(tok_grads[name], want, atol=1e-6, rtol=1e-4, msg=name)


def test_bad_budgets_are_refused():
    from rpt.config import TrainLoopConfig

    with pytest.raises(ValueError, match="max_tokens_per_micro_batch must be >= 1"):
        TrainLoopConfig(max_tokens_per_micro_batch=0).check("rpt")
    with pytest.raises(ValueError, match="logits_chunk_tokens must be >= 0"):
        TrainLoopConfig(logits_chunk_tokens=-1).check("rl")
    TrainLoopConfig(max_tokens_per_micro_batch=4096, logits_chunk_tokens=0).check("rpt")
