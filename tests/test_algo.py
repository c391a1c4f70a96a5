"""GRPO advantages, every loss variant, aggregation modes and token masks against hand-computed values."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from rpt.algo.advantages import all_equal_groups, group_advantages
from rpt.algo.losses import (
    PolicyInputs,
    PolicyTerms,
    aggregation_weights,
    get_policy_loss,
    kl_k3,
    token_losses,
    with_tis,
)
from rpt.algo.token_choice import clip_cov_mask, forking_mask, kl_cov_mask, token_covariance


def algo(**kw):
    base = dict(clip_low=0.2, clip_high=0.28, policy_loss="ppo", gppo_beta_low=1.0, gppo_beta_high=1.0,
                kl_cov_coef=1.0, entropy_coef=0.0, kl_coef=0.0, tis_cap=0.0)
    return SimpleNamespace(**{**base, **kw})


def policy_terms(logp, old, adv, cfg, chosen=None, mask=None):
    """The registered variant ``cfg.policy_loss`` on one micro-batch (every token a response token by default)."""
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask
    inputs = PolicyInputs(logp, old, adv.expand_as(logp), mask, torch.zeros_like(logp), chosen, cfg)
    return get_policy_loss(cfg.policy_loss).fn(inputs)


def test_group_advantages_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, 4, norm_by_std=True, eps=0.0)
    # group 1: mean .25, sample (Bessel-corrected) std sqrt(.1875 * 4 / 3) = 0.5, as verl and TRL compute it
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    one_right = group_advantages(torch.tensor([1.0] + [0.0] * 7), 8, eps=0.0)  # the anchor: TRL gives 2.475
    assert one_right[0].item() == pytest.approx(2.4749, abs=1e-4)
    assert torch.all(group_advantages(r, 4)[4:] == 0)  # all-equal group: no signal (eps avoids 0/0)
    drgrpo = group_advantages(r, 4, norm_by_std=False)
    assert torch.allclose(drgrpo[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert all_equal_groups(r, 4).tolist() == [False, True]
    with pytest.raises(ValueError):
        group_advantages(r, 3)


def test_ppo_clip_higher_values():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    t = policy_terms(logp, old, adv, algo())
    # ratio 1.5, A>0 -> clipped at 1.28: loss -1.28 ; ratio .5, A<0 -> clipped at .8: loss .8 ;
    # ratio 1.1 unclipped: -1.1 ; ratio .9 unclipped, A<0: .9
    assert torch.allclose(t.loss, torch.tensor([[-1.28, 0.8, -1.1, 0.9]]))
    assert t.metrics["clip_frac_high"].tolist() == [[True, False, False, False]]
    assert t.metrics["clip_frac_low"].tolist() == [[False, True, False, False]]


def test_ppo_clipped_tokens_have_no_gradient_but_gppo_keeps_it():
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    for variant, beta, expected in [("ppo", 1.0, [0.0, 0.0]), ("gppo", 1.0, [-1.28, 0.8]),
                                    ("gppo", 0.25, [-1.28, 0.2])]:
        logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()
        t = policy_terms(logp, old, adv, algo(policy_loss=variant, gppo_beta_low=beta))
        t.loss.sum().backward()
        # GPPO: forward equals PPO; d/dlogp of (1±eps)·δ/sg(δ)·(−A) = −A·(1±eps)·β
        assert torch.allclose(t.loss.detach(), torch.tensor([[-1.28, 0.8]]))
        assert torch.allclose(logp.grad, torch.tensor([expected])), (variant, logp.grad)


def test_clip_cov_zeroes_chosen_tokens_and_kl_cov_penalises():
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    chosen = torch.tensor([[True, False, False]])
    logp = torch.log(torch.tensor([[1.1, 1.1, 0.9]])).requires_grad_()
    t = policy_terms(logp, old, adv, algo(policy_loss="clip_cov"), chosen)
    t.loss.sum().backward()
    assert t.loss[0, 0] == 0  # verl multiplies the chosen tokens' clipped objective by 0: no value, no gradient
    assert logp.grad[0, 0] == 0 and torch.isclose(logp.grad[0, 1], torch.tensor(-1.1))
    logp2 = torch.log(torch.tensor([[1.1, 1.1, 0.9]]))
    t2 = policy_terms(logp2, old, adv, algo(policy_loss="kl_cov"), chosen)
    assert torch.allclose(t2.loss, torch.tensor([[-1.1 + math.log(1.1), -1.1, 0.9]]))


def test_kl_cov_uses_the_unclipped_ratio():
    """KL-Cov (paper and verl) has no PPO clip: a token far outside the clip range keeps its gradient −A·ratio,
    where PPO-clip gives it none; the chosen token adds β·sign(log r)."""
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, 1.0]])
    chosen = torch.tensor([[False, True]])
    grads = {}
    for variant in ("ppo", "kl_cov"):
        logp = torch.log(torch.tensor([[1.5, 1.5]])).requires_grad_()
        t = policy_terms(logp, old, adv, algo(policy_loss=variant), chosen)
        t.loss.sum().backward()
        grads[variant] = logp.grad
        if variant == "kl_cov":
            assert torch.allclose(t.loss, torch.tensor([[-1.5, -1.5 + math.log(1.5)]]))
            assert not t.metrics["clip_frac_high"].any()
    assert torch.all(grads["ppo"] == 0)
    assert torch.allclose(grads["kl_cov"], torch.tensor([[-1.5, -1.5 + 1.0]]))


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match="policy_loss"):
        policy_terms(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), algo(policy_loss="nope"))


def test_registry_names_every_variant_and_which_need_a_moving_policy():
    from rpt.algo.losses import POLICY_LOSSES

    assert set(POLICY_LOSSES) >= {"ppo", "gppo", "clip_cov", "kl_cov", "gspo"}
    symmetric, asymmetric = algo(clip_high=0.2), algo()
    moving = {name for name, loss in POLICY_LOSSES.items() if loss.acts_only_off_policy(symmetric)}
    assert moving == {"gppo", "kl_cov", "gspo"}  # Clip-Cov's zeroing acts at ratio 1; the others do not
    assert "clip-higher" in POLICY_LOSSES["ppo"].acts_only_off_policy(asymmetric)


def test_gspo_clips_the_sequence_ratio_and_weighs_every_token_by_it():
    """GSPO: one ratio per sequence, exp(mean log ratio over its response tokens); inside the clip range every
    response token's gradient is −A·s; outside (on the side its advantage pushes) the sequence has none."""
    old = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([[1.0], [1.0]])
    cfg = algo(policy_loss="gspo", clip_low=0.0003, clip_high=0.0004)
    # row 0: log ratios 1e-4 and -3e-4 (mean -1e-4: inside the range), the padded third ignored;
    # row 1: every token +1e-3 (s = e^1e-3 > 1 + 4e-4 with A > 0: clipped)
    logp = torch.tensor([[1e-4, -3e-4, 5.0], [1e-3, 1e-3, 1e-3]]).requires_grad_()
    t = policy_terms(logp, old, adv, cfg, mask=mask)
    s0 = math.exp(-1e-4)
    torch.testing.assert_close(t.loss[0, :2], torch.full((2,), -s0))
    torch.testing.assert_close(t.loss[1], torch.full((3,), -(1 + 4e-4)))
    assert t.metrics["clip_frac_high"].tolist() == [[False, False, False], [True, True, True]]
    (t.loss * mask).sum().backward()
    torch.testing.assert_close(logp.grad[0, :2], torch.full((2,), -s0))
    assert torch.all(logp.grad[1] == 0)
    # at ratio 1 it is GRPO's token gradient: what makes it act only on a moved policy
    logp = torch.zeros(2, 3, requires_grad=True)
    policy_terms(logp, old, adv, cfg, mask=mask).loss.sum().backward()
    assert torch.all(logp.grad == -1.0)


def test_aggregation_modes_hand_values_and_split_invariance():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    loss = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0], [6.0, 9.0, 9.0]])
    n_tok, n_seq = 6.0, 3.0
    expected = {
        "token-mean": (1 + 2 + 3 + 4 + 5 + 6) / 6,
        "seq-mean-token-mean": ((1 + 2) / 2 + (3 + 4 + 5) / 3 + 6 / 1) / 3,
        "seq-mean-token-sum-norm": ((1 + 2) + (3 + 4 + 5) + 6) / (4 * 3),
    }
    for mode, value in expected.items():
        w = aggregation_weights(mask, mode, n_tok, n_seq, norm_len=4.0)
        whole = (loss * w).sum()
        assert torch.isclose(whole, torch.tensor(value)), mode
        # the same loss summed over micro-batches of one row each (weights use global counts)
        parts = sum((loss[i:i + 1] * aggregation_weights(mask[i:i + 1], mode, n_tok, n_seq, 4.0)).sum()
                    for i in range(3))
        assert torch.isclose(parts, whole), mode
    with pytest.raises(ValueError):
        aggregation_weights(mask, "mean", 1, 1, 1)


def test_forking_mask_keeps_top_rho():
    ent = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7], [0.2, 0.8, 0.6, 0.4, 0.0]])
    mask = torch.ones_like(ent, dtype=torch.bool)
    mask[1, 4] = False  # padding is never selected
    kept = forking_mask(ent, mask, 0.2)  # 9 tokens -> ceil(0.2 * 9) = 2: 0.9 and 0.8 survive
    assert kept.sum() == 2 and kept[0, 1] and kept[1, 1]


def test_forking_mask_keeps_exactly_the_share_on_ties():
    """All entropies equal: a quantile threshold keeps every token (100%); top-k keeps ⌈rho·N⌉."""
    ent = torch.full((4, 10), 0.7)
    mask = torch.ones_like(ent, dtype=torch.bool)
    mask[3, 5:] = False
    kept = forking_mask(ent, mask, 0.2)
    assert int(kept.sum()) == math.ceil(0.2 * 35) and not (kept & ~mask).any()


def test_forking_mask_above_two_to_the_24_values():
    """The paper's batch is 2^24 response tokens; torch.quantile refuses inputs that large."""
    n = 2**24 + 8
    ent = torch.arange(n, dtype=torch.float32).view(1, n) / n
    kept = forking_mask(ent, torch.ones_like(ent, dtype=torch.bool), 0.2)
    k = math.ceil(0.2 * n)
    assert int(kept.sum()) == k and bool(kept[0, n - k:].all())


def test_covariance_and_cov_masks():
    logp = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    cov = token_covariance(logp, adv, mask)
    # means over 3 tokens: logp -2, adv 1/3
    assert torch.allclose(cov, torch.tensor([[1 * (2 / 3), 0.0, (-1) * (-4 / 3), 0.0]]))
    top = kl_cov_mask(cov, mask, ratio=0.34)  # floor(.34*3) = 1 -> the largest covariance
    assert top.tolist() == [[False, False, True, False]]
    g = torch.Generator().manual_seed(0)
    picked = clip_cov_mask(cov, mask, ratio=0.5, low=0.5, high=2.0, generator=g)  # floor(1.5)=1 of 2 in window
    assert int(picked.sum()) == 1 and not picked[0, 1] and not picked[0, 3]


def test_cov_methods_take_at_least_one_token_when_the_ratio_is_positive():
    """The paper's ratios (2e-4, 2e-3) give ⌊r·N⌋ = 0 below 5,000 (500) tokens: one token is still chosen."""
    cov = torch.tensor([[2.0, 3.0, 0.1, 4.0]])
    mask = torch.ones_like(cov, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    assert int(clip_cov_mask(cov, mask, 2e-4, 1.0, 5.0, g).sum()) == 1
    assert kl_cov_mask(cov, mask, 2e-4).tolist() == [[False, False, False, True]]
    assert not clip_cov_mask(cov, mask, 0.0, 1.0, 5.0, g).any() and not kl_cov_mask(cov, mask, 0.0).any()


def test_k3_kl_is_zero_at_equal_policies_and_positive_otherwise():
    lp = torch.tensor([-1.0, -2.0])
    every = torch.ones(2, dtype=torch.bool)
    assert torch.all(kl_k3(lp, lp, every) == 0)
    assert torch.all(kl_k3(lp, lp - 0.5, every) > 0)


def test_k3_kl_is_finite_at_padding_and_prompt_positions():
    """A padding position can hold any log-prob (here −200 against 0): exp(200) overflows float32, and inf times a
    zero aggregation weight is NaN. The difference is masked before exp."""
    logp = torch.tensor([[-1.0, -200.0]], requires_grad=True)
    ref = torch.tensor([[-1.2, 0.0]])
    mask = torch.tensor([[True, False]])
    inputs = PolicyInputs(logp, logp.detach(), torch.zeros(1, 2), mask, torch.zeros(1, 2), None, algo(kl_coef=0.1))
    per_token = token_losses(SimpleNamespace(loss=torch.zeros(1, 2)), inputs, ref)
    weights = mask.float()
    loss = (per_token * weights).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 1] == 0


def test_truncated_importance_sampling_hand_values():
    """TIS multiplies each token's policy term by min(pi_old / pi_sampler, C) and passes no gradient through the
    weight: ratios 5 (capped at 2), 0.5 and 1; padding (any sampler value) gets weight 1 and no overflow."""
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.3, 0.9]])).requires_grad_()
    sampler = torch.log(torch.tensor([[0.1, 0.4, 0.3, 1e-30]]))
    mask = torch.tensor([[True, True, True, False]])
    terms = PolicyTerms(loss=-logp * torch.tensor([[1.0, 2.0, 3.0, 4.0]]), metrics={})
    inputs = PolicyInputs(logp, logp.detach(), torch.zeros(1, 4), mask, torch.zeros(1, 4), None, algo(tis_cap=2.0),
                          sampler)
    weight = torch.tensor([[2.0, 0.5, 1.0, 1.0]])
    per_token = token_losses(with_tis(terms, inputs), inputs, None)
    torch.testing.assert_close(per_token, terms.loss * weight)
    per_token.sum().backward()
    torch.testing.assert_close(logp.grad, -torch.tensor([[1.0, 2.0, 3.0, 4.0]]) * weight)
    off = token_losses(with_tis(terms, replace(inputs, algo=algo(tis_cap=0.0))), inputs, None)
    assert torch.equal(off, terms.loss)
    # a feedback term added after the policy term (SDPO's distillation) takes no importance weight
    dense = torch.tensor([[0.3, 0.1, 0.7, 0.0]])
    weighted = with_tis(terms, inputs)
    with_distill = replace(weighted, loss=weighted.loss + dense)
    torch.testing.assert_close(token_losses(with_distill, inputs, None), terms.loss.detach() * weight + dense)


def test_truncated_importance_sampling_settings_that_cannot_work_are_refused():
    from rpt.config import AlgoConfig, CritiqueConfig

    with pytest.raises(ValueError, match="tis_cap must be 0 .* or >= 1"):
        AlgoConfig(tis_cap=0.5)
    with pytest.raises(ValueError, match="tis_cap cannot run with algo.critique"):
        AlgoConfig(tis_cap=2.0, critique=CritiqueConfig(enabled=True))
    assert AlgoConfig(tis_cap=2.0).tis_cap == 2.0
