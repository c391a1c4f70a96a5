"""RLP (``algo=rlp``, arXiv 2510.01265): on a tiny real megatron model, the information-gain reward
log p_θ(x_t | x_<t, c_t) − log p_EMA(x_t | x_<t) against a full-logits reference (0 for an empty thought when the
EMA equals the policy; positive for a thought that raises the true token's probability, negative for one that
lowers it); two steps of the `rpt` stage's RL step on next-token items (finite rewards, only the thought tokens
in the loss mask, the EMA moving by its rate); the EMA baseline resuming exactly from an in-process checkpoint
save / load (not a kill -9: the checkpoint is the same code path, the process restart is covered by the SDPO and
pipeline resume tests); every option changing training, except ``ema_rate``, which changes the rewards but, as the
baseline is constant within a group, never the group-relative advantages."""

from __future__ import annotations

import math

import pytest
import torch

from rpt.model.forward import full_logits
from rpt.rollout.rollouts import Rollouts
from rpt.tasks.next_token import NextTokenTask
from rpt.train.info_gain import InformationGain
from rpt.train.rl_loop import collect, rl_step
from rpt.train.rl_update import build_batch
from tests.helpers import assert_extra_model_resumes_exactly, policy_weights, rl_cfg, rl_setup

FAST = ["rpt.lr=0.01", "rpt.min_lr=0.01", "rpt.warmup_steps=0"]


def digit_items(tokenizer) -> list[dict]:
    """Next-token items: counting runs whose true continuation is ``7 8 9``."""
    return [{"context": tokenizer.encode(" ".join(str(d) for d in range(s, 7)) + " "),
             "target": tokenizer.encode("7 8 9"), "entropy": 0.0} for s in range(6)]


def rlp_setup(runtime, tokenizer, extra=()):
    cfg = rl_cfg(["algo=rlp", *extra])
    return rl_setup(cfg, runtime, tokenizer, NextTokenTask.from_rollout(digit_items(tokenizer), tokenizer,
                                                                         cfg.rollout))


def reference_logp(model, context: list[int], target: list[int]) -> float:
    """Σ_j log p(target_j | context, target_<j) from the full logits of one unpadded sequence."""
    seq = torch.tensor([context + target])
    logp = torch.log_softmax(full_logits(model, seq[:, :-1])[0], -1)
    return sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(target))


def rollouts_of(prompts: list[list[int]], thoughts: list[list[int]], pad: int) -> Rollouts:
    """Hand-made rollouts: each prompt followed by its thought as the response."""
    width = max(len(p) + len(c) for p, c in zip(prompts, thoughts, strict=True))
    tokens = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, thoughts, strict=True)):
        tokens[i, :len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p):len(p) + len(c)] = True
    n = len(prompts)
    return Rollouts(tokens, torch.tensor([len(p) for p in prompts]), mask, torch.zeros(tokens.shape),
                    torch.zeros(n, dtype=torch.bool))


def test_information_gain_against_hand_values(runtime, tokenizer):
    """Group of 4 thoughts for one position: empty, end-of-sequence only (dropped: empty too), and the two
    single-token thoughts that raise and lower the true token's probability most. With φ = θ the empty thoughts
    gain exactly 0 and the others their reference log-prob differences (> 0 and < 0); with φ moved away, every gain
    is the policy's reference term minus the EMA's."""
    run = rlp_setup(runtime, tokenizer)
    rlp, model, tok = run.feedback_of(InformationGain), run.trainable.model.module, run.task.tokenizer
    item = run.task.items[0]
    prompt, bridge, target = run.task.prompt_ids(item), tok.encode(rlp.cfg.bridge), item["target"][:1]
    with torch.no_grad():  # every single-token thought at once: which raise / lower p(x_t) most
        rows = torch.tensor([prompt + [v] + bridge + target for v in range(tok.vocab_size)])
        logp = torch.log_softmax(full_logits(model, rows[:, :-1])[:, -1], -1)[:, target[0]]
        best, worst = int(logp.argmax()), int(logp.argmin())
    thoughts = [[], [tok.eos_id], [best], [worst]]
    ro = rollouts_of([prompt] * 4, thoughts, tok.pad_id)
    gain, policy, baseline = rlp.rewards(model, [item], ro, "cpu")
    no_think = reference_logp(model, prompt + bridge, target)
    with_thought = [reference_logp(model, prompt + c + bridge, target) for c in ([], [], [best], [worst])]
    assert gain[0] == 0.0 and gain[1] == 0.0  # the same tokens under the same weights
    torch.testing.assert_close(baseline, torch.full((4,), no_think), atol=1e-5, rtol=0)
    torch.testing.assert_close(policy, torch.tensor(with_thought), atol=1e-5, rtol=0)
    assert gain[2] > 1e-3 and gain[3] < -1e-3
    torch.testing.assert_close(gain, torch.tensor(with_thought) - no_think, atol=1e-5, rtol=0)

    with torch.no_grad():  # the baseline is φ's, not θ's
        for p in rlp.ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gain, _, baseline = rlp.rewards(model, [item], ro, "cpu")
    ema_term = reference_logp(rlp.ema, prompt + bridge, target)
    torch.testing.assert_close(baseline, torch.full((4,), ema_term), atol=1e-5, rtol=0)
    torch.testing.assert_close(gain, torch.tensor(with_thought) - ema_term, atol=1e-5, rtol=0)
    assert abs(float(gain[0])) > 1e-4  # an empty thought now gains by the drift alone

    two = InformationGain(type(rlp.cfg)(enabled=True, target_tokens=2), run.task, run.trainable, 4, rlp.ema)
    gain2, policy2, _ = two.rewards(model, [item], ro, "cpu")  # k = 2: the span's log-prob, teacher-forced
    span = [reference_logp(model, prompt + c + bridge, item["target"][:2]) for c in ([], [], [best], [worst])]
    torch.testing.assert_close(policy2, torch.tensor(span), atol=1e-5, rtol=0)
    one = InformationGain(type(rlp.cfg)(enabled=True, chunk_tokens=1), run.task, run.trainable, 4, rlp.ema, None, 1)
    torch.testing.assert_close(one.rewards(model, [item], ro, "cpu")[0], gain, atol=1e-5, rtol=0)  # memory knobs


def test_rlp_trains_the_rpt_step(runtime, tokenizer):
    """Two steps of the `rpt` stage's RL step on next-token items: the advantages' rewards are the gains (finite,
    not the prefix reward), the loss mask is the sampled thought tokens only (the target is never in the
    rollout), the weights move, and the EMA moves by exactly its rate after each step."""
    run = rlp_setup(runtime, tokenizer, [*FAST, "algo.rlp.ema_rate=0.25"])
    rlp = run.feedback_of(InformationGain)
    got = collect(run, 0, 0)
    assert torch.isfinite(got.rewards).all() and got.rewards.dtype == torch.float32
    gain, _, _ = rlp.rewards(run.trainable.model.module, got.items, got.rollouts, "cpu")
    torch.testing.assert_close(got.rewards, gain)  # the draw's rewards are the information gains
    batch = build_batch(got.rollouts, torch.ones(len(got.rewards)), None, run.algo, run.rollout.group_size,
                        torch.Generator().manual_seed(0))
    assert torch.equal(batch.mask, got.rollouts.response_mask[:, 1:])  # thought tokens, nothing else
    assert got.rollouts.tokens.shape[1] <= int((got.rollouts.prompt_lens + got.rollouts.response_lens).max())

    start = policy_weights(run)
    rlp.last = (torch.zeros(0),) * 3
    cursor = 0
    for step in range(2):
        ema_before = [p.detach().clone() for p in rlp.ema.parameters()]
        m, cursor = rl_step(run, step, cursor)
        assert m["update_applied"] == 1.0 and math.isfinite(m["loss"])
        assert all(math.isfinite(m[k]) for k in ("rlp_gain_mean", "rlp_gain_std", "rlp_logp_thought",
                                                 "rlp_logp_ema"))
        for e, b, p in zip(rlp.ema.parameters(), ema_before, policy_weights(run), strict=True):
            torch.testing.assert_close(e, torch.lerp(b, p, 0.25), atol=1e-6, rtol=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(start, policy_weights(run), strict=True)) > 1e-6


def test_ema_baseline_resumes_exactly(tmp_path, runtime, tokenizer):
    """Two steps uninterrupted equal one step, a checkpoint, a fresh setup (its EMA scrambled) loading it, and one
    more step: the EMA baseline, which sets step 2's rewards, is part of the checkpoint."""
    extra = [*FAST, "algo.rlp.ema_rate=0.5"]
    assert_extra_model_resumes_exactly(lambda: rlp_setup(runtime, tokenizer, extra),
                                       lambda run: run.feedback_of(InformationGain).ema,
                                       ("loss", "grad_norm", "rlp_gain_mean", "rlp_logp_ema", "entropy"), tmp_path)


def test_the_ema_is_kept_in_float32(runtime, tokenizer):
    """A bfloat16 initial model (a GPU run's dtype) becomes a float32 φ, so steps of 0.001·(θ − φ) are not rounded
    away; a float32 one is used as it is."""
    from rpt.model.build import build_model

    run = rlp_setup(runtime, tokenizer)
    rlp = run.feedback_of(InformationGain)
    low = build_model(rl_cfg([]).model, tokenizer.vocab_size, torch.bfloat16)
    ema = InformationGain(rlp.cfg, run.task, run.trainable, 4, low, rl_cfg([]).model).ema
    assert ema is not low and all(p.dtype == torch.float32 for p in ema.parameters())
    for a, b in zip(ema.parameters(), low.parameters(), strict=True):
        assert torch.equal(a, b.float())
    assert InformationGain(rlp.cfg, run.task, run.trainable, 4, rlp.ema).ema is rlp.ema
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in run.trainable.model.module.parameters():
            p.add_(1.0)
    InformationGain(rlp.cfg, run.task, run.trainable, 4, ema).after_update()
    assert all(bool((a != b).any()) for a, b in zip(ema.parameters(), before, strict=True))


def test_a_scored_sequence_past_the_context_is_refused(runtime, tokenizer):
    from rpt.errors import Refusal

    run = rlp_setup(runtime, tokenizer)
    model, item = run.trainable.model.module, run.task.items[0]
    ro = rollouts_of([run.task.prompt_ids(item)] * 4, [[5]] * 4, tokenizer.pad_id)
    model.max_sequence_length = len(run.task.prompt_ids(item)) + 2
    with pytest.raises(Refusal, match="algo.rlp scores"):
        run.feedback_of(InformationGain).rewards(model, [item], ro, "cpu")


def test_bad_rlp_settings_are_refused():
    for bad, match in (("algo.rlp.target_tokens=0", "target_tokens"), ("algo.rlp.ema_rate=1.5", "ema_rate"),
                       ("algo.sdpo.enabled=true", "separate"), ("algo.critique.enabled=true", "separate")):
        with pytest.raises(ValueError, match=match):
            rl_cfg(["algo=rlp", bad])


_TWO_STEPS: dict[tuple, tuple] = {}


def two_steps(runtime, tokenizer, extra: tuple) -> tuple[list[dict], list[torch.Tensor]]:
    """The metrics and final weights of two RLP steps from the same start with ``extra`` overrides (cached: the
    default run is every comparison's reference)."""
    if extra not in _TWO_STEPS:
        run = rlp_setup(runtime, tokenizer, [*FAST, *extra])
        rows, cursor = [], 0
        for step in range(2):
            m, cursor = rl_step(run, step, cursor)
            rows.append(m)
        _TWO_STEPS[extra] = rows, policy_weights(run)
    return _TWO_STEPS[extra]


def test_ema_rate_changes_the_reward_not_the_update(runtime, tokenizer):
    """The EMA term is one number per position, the same for the G thoughts of a group, so group-relative
    advantages cancel it: ``ema_rate`` changes the rewards (what the gain means, what is logged) from step 2 on, and
    the weights not at all (to float rounding)."""
    slow, w_slow = two_steps(runtime, tokenizer, ())
    fast, w_fast = two_steps(runtime, tokenizer, ("algo.rlp.ema_rate=0.5",))
    assert slow[0]["rlp_logp_ema"] == fast[0]["rlp_logp_ema"]  # φ = θ_init for both at step 1
    assert abs(slow[1]["rlp_logp_ema"] - fast[1]["rlp_logp_ema"]) > 1e-4
    assert abs(slow[1]["rlp_gain_mean"] - fast[1]["rlp_gain_mean"]) > 1e-4
    for a, b in zip(w_slow, w_fast, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("option", ["algo.rlp.target_tokens=3", "algo.rlp.bridge=' '",
                                    "algo.rlp.enabled=false"])
def test_every_rlp_option_changes_training(option, runtime, tokenizer):
    """From the same start and rollouts, each option (and RLP itself, against GRPO on the prefix reward) trains
    other weights than default RLP within two steps."""
    weights = [two_steps(runtime, tokenizer, extra)[1] for extra in ((), (option,))]
    assert max(float((a - b).abs().max()) for a, b in zip(*weights, strict=True)) > 1e-7, option
