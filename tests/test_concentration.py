"""Where RL's effect lands (``rpt.analysis.concentration``): the per-token change against a direct formula, the
concentration on hand-built policies whose answers are known, the curve's shape, the planning split, and the
measurement on two real tiny megatron models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rpt.analysis.concentration import concentration, measure_models, token_change, top_count


def policies_with_entropies(n: int, vocab: int = 6) -> torch.Tensor:
    """``[n, vocab]`` logits whose entropy strictly decreases with the row index (sharper and sharper)."""
    base = torch.linspace(0.0, 1.0, vocab)
    return torch.stack([base * (0.5 + i) for i in range(n)])


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def test_token_change_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    after, before = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    targets = torch.tensor([[0, 4, 2], [1, 1, 3]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    tc = token_change(after, before, targets, mask)
    for i in range(2):
        for t in range(3):
            pa = [math.exp(x) / sum(math.exp(y) for y in after[i, t].tolist()) for x in after[i, t].tolist()]
            pb = [math.exp(x) / sum(math.exp(y) for y in before[i, t].tolist()) for x in before[i, t].tolist()]
            kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pa, pb, strict=True))
            dlogp = abs(math.log(pa[targets[i, t]]) - math.log(pb[targets[i, t]]))
            h = -sum(b * math.log(b) for b in pb)
            want = (kl, dlogp, h) if mask[i, t] else (0.0, 0.0, 0.0)
            got = (float(tc.kl[i, t]), float(tc.abs_dlogp[i, t]), float(tc.entropy[i, t]))
            assert got == pytest.approx(want, abs=1e-5), (i, t)
    assert float(tc.kl[0, 0]) > 0.01  # the random pair does differ: the check above is not comparing zeros


def test_token_change_is_zero_for_identical_policies_and_ignores_unreachable_tokens():
    logits = torch.tensor([[0.0, 1.0, float("-inf")]])
    tc = token_change(logits, logits.clone(), torch.tensor([1]), torch.tensor([True]))
    assert float(tc.kl[0]) == 0.0 and float(tc.abs_dlogp[0]) == 0.0
    assert float(tc.entropy[0]) == pytest.approx(float(entropy_of(torch.tensor([[0.0, 1.0]]))[0]), abs=1e-6)


def test_change_only_on_the_highest_entropy_positions_gives_top_share_one():
    before = policies_with_entropies(10)
    after = before.clone()
    after[:2] = before[:2].flip(-1)  # rows 0 and 1 are the two highest-entropy positions
    targets, mask = torch.zeros(10, dtype=torch.long), torch.ones(10, dtype=torch.bool)
    tc = token_change(after, before, targets, mask)
    assert bool((tc.entropy[:-1] > tc.entropy[1:]).all())
    out = concentration(tc.kl, tc.entropy, mask, top=0.2)
    assert out["tokens"] == 10 and out["top_tokens"] == 2
    assert out["top_share"] == pytest.approx(1.0)
    assert dict(map(tuple, out["curve"]))[0.2] == pytest.approx(1.0)
    # the same change on the two *lowest*-entropy positions: nothing at the top
    after = before.clone()
    after[-2:] = before[-2:].flip(-1)
    low = token_change(after, before, targets, mask)
    assert concentration(low.kl, low.entropy, mask)["top_share"] == pytest.approx(0.0)


@pytest.mark.parametrize(("n", "want"), [(10, 0.2), (15, 0.2), (12, 3 / 12), (1, 1.0)])
def test_uniform_change_gives_the_token_share_of_the_top_cut(n, want):
    entropy = torch.rand(n, generator=torch.Generator().manual_seed(n))
    out = concentration(torch.ones(n), entropy, torch.ones(n, dtype=torch.bool), top=0.2)
    assert out["top_tokens"] == math.ceil(round(0.2 * n, 9))
    assert out["top_share"] == pytest.approx(want)
    assert out["mean_change"] == pytest.approx(1.0)


def test_top_count_is_the_exact_ceiling():
    assert [top_count(n, 0.2) for n in (0, 1, 4, 5, 6, 15, 16)] == [0, 1, 1, 1, 2, 3, 4]
    assert top_count(3, 1.0) == 3
    assert 0.28 * 25 > 7 and top_count(25, 0.28) == 7  # 0.28 · 25 is 7.000000000000001 in floating point
    assert 0.07 * 100 > 7 and top_count(100, 0.07) == 7


def test_curve_runs_from_origin_to_one_and_never_falls():
    g = torch.Generator().manual_seed(1)
    n = 1000
    change, entropy = torch.rand(n, generator=g) ** 3, torch.rand(n, generator=g)
    mask = torch.rand(n, generator=g) > 0.3
    out = concentration(change, entropy, mask, top=0.2)
    curve = out["curve"]
    assert curve[0] == [0.0, 0.0] and curve[-1] == [1.0, 1.0]
    assert 45 <= len(curve) <= 51
    assert all(b[0] > a[0] and b[1] >= a[1] for a, b in zip(curve, curve[1:], strict=False))
    # the top share is the curve read at ⌈0.2·N⌉ tokens, summed by hand here
    c, h = change[mask].double(), entropy[mask].double()
    k = top_count(c.numel(), 0.2)
    assert out["top_share"] == pytest.approx(float(c[h.argsort(descending=True)[:k]].sum() / c.sum()))


def test_masked_out_tokens_count_for_nothing():
    change = torch.tensor([1.0, 100.0, 1.0, 1.0, 1.0])
    entropy = torch.tensor([0.1, 9.0, 0.2, 0.3, 0.4])
    mask = torch.tensor([True, False, True, True, True])
    out = concentration(change, entropy, mask, top=0.25)
    assert out["tokens"] == 4 and out["top_share"] == pytest.approx(0.25) and out["total_change"] == 4.0


def test_planning_split_by_hand():
    change = torch.tensor([3.0, 1.0, 0.0, 4.0, 2.0])
    entropy = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    planning = torch.tensor([True, False, False, True, False])
    out = concentration(change, entropy, torch.ones(5, dtype=torch.bool), top=0.4, planning=planning)
    assert out["planning_token_share"] == pytest.approx(2 / 5)
    assert out["planning_change_share"] == pytest.approx(7 / 10)
    assert out["top_share"] == pytest.approx((2.0 + 4.0) / 10)  # entropies 5 and 4 are the top 2 of 5


def test_no_change_leaves_the_shares_undefined_and_negative_change_is_refused():
    out = concentration(torch.zeros(6), torch.rand(6), torch.ones(6, dtype=torch.bool),
                        planning=torch.ones(6, dtype=torch.bool))
    assert out["top_share"] is None and out["curve"] == [] and out["planning_change_share"] is None
    assert out["planning_token_share"] == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        concentration(torch.tensor([1.0, -0.5]), torch.rand(2), torch.ones(2, dtype=torch.bool))


def test_measured_change_is_zero_for_one_policy_and_positive_for_two(tiny_model, tokenizer, runtime):
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat
    from rpt.model.build import build_model
    from rpt.rollout.engine import SamplingParams

    cpu_compat.seed_all(1)
    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2)
    other = build_model(cfg, tokenizer.vocab_size)
    other.eval()
    prompts = [tokenizer.encode(text) for text in ("3 + 4 = <think>", "9 + 6 + 5 =", "1 + 1 + 2 + 7 = <think>")]
    prompts = [p for p in prompts for _ in range(4)]
    sampling = SamplingParams(max_new_tokens=10, temperature=0.8, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    grams = [" = ", "</think>", "\\boxed{"]
    same = measure_models(tiny_model, tiny_model, prompts, sampling, tokenizer, grams, 0, runtime.device)
    assert same["tokens"] > 0 and same["mean_kl"] == 0.0 and same["logp"]["mean_change"] == 0.0
    assert same["top_share"] is None and same["curve"] == []
    moved = measure_models(tiny_model, other, prompts, sampling, tokenizer, grams, 0, runtime.device)
    assert moved["tokens"] == same["tokens"]  # the same rollouts: they come from the "before" model and the seed
    assert moved["mean_kl"] > 0.0 and moved["logp"]["mean_change"] > 0.0
    assert 0.0 <= moved["top_share"] <= 1.0 and moved["curve"][0] == [0.0, 0.0] and moved["curve"][-1] == [1.0, 1.0]
    assert 0.0 <= moved["planning_token_share"] <= 1.0


def test_eval_measures_every_finished_rl_stage_against_its_start(tmp_path):
    from rpt.rundir import RunDir
    from rpt.stages.eval import concentration_pairs

    rd = RunDir(tmp_path, "run")
    cfg = SimpleNamespace(rpt=SimpleNamespace(init_from="pretrain"),
                          rl_task=SimpleNamespace(train_on=["pretrain", "rpt"]))
    assert concentration_pairs(cfg, rd) == []
    rd.mark_done("rpt", {})
    (rd.checkpoints("rl_rpt")).mkdir(parents=True)
    (rd.checkpoints("rl_rpt") / "latest").write_text("step_000002")
    assert concentration_pairs(cfg, rd) == [("rpt", "pretrain"), ("rl_rpt", "rpt")]


def test_report_section_states_the_share_and_draws_the_curves(tmp_path):
    from rpt.analysis.report_md import concentration_section
    from rpt.rundir import RunDir, write_json

    rd = RunDir(tmp_path, "run")
    assert concentration_section(rd) == ""
    entry = {"top": 0.2, "top_share": 0.61, "tokens": 500, "curve": [[0.0, 0.0], [0.2, 0.61], [1.0, 1.0]],
             "planning_token_share": 0.1, "planning_change_share": 0.3, "mean_kl": 0.0123, "before": "pretrain",
             "after": "rpt", "prompts": 64, "samples_per_prompt": 8, "logp": {"top_share": 0.5}}
    write_json(rd.eval / "concentration.json", {"rpt": entry})
    text = concentration_section(rd)
    assert "## Where RL's effect lands" in text
    assert "| rpt (from `pretrain`) | 61.0% | 50.0% | 10.0% | 30.0% | 0.0123 | 500 | 64 × 8 |" in text
    assert "carry 61.0% of the policy's change (3.0× a uniform spread's 20%)" in text
    assert (rd.report / "concentration.png").read_bytes()[:4] == b"\x89PNG"
