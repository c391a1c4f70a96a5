"""SDPO (``algo=sdpo``, arXiv 2601.20802): the top-K + tail divergence against the full vocabulary; on a tiny real
megatron model, the teacher equals the student when the feedback is empty (zero loss and gradient), no gradient
flows through the teacher, the chunked top-K loss gradient equals a full-logits reference, SDPO changes training
versus GRPO on the same rollouts, and the EMA teacher resumes exactly from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from rpt.algo.sdpo import full_divergence, topk_tail_divergence
from rpt.model.forward import full_logits
from rpt.train.rl_loop import collect, rl_step
from rpt.train.rl_update import build_batch
from rpt.train.self_distill import SelfDistiller, TeacherTargets
from tests.helpers import DigitTask, assert_extra_model_resumes_exactly, policy_weights, rl_cfg, rl_setup


@pytest.mark.parametrize("kind", ["kl", "js"])
def test_topk_tail_divergence_matches_the_full_vocabulary(kind):
    torch.manual_seed(0)
    student = torch.randn(5, 12, requires_grad=True)
    teacher = torch.randn(5, 12) * 2
    t_logp = torch.log_softmax(teacher, -1)
    for k in (3, 7, 12):
        ids = t_logp.topk(k, -1).indices
        ours = topk_tail_divergence(torch.log_softmax(student, -1).gather(-1, ids), t_logp.gather(-1, ids), kind)
        ref = full_divergence(student, teacher, kind, k)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
        g_ours = torch.autograd.grad(ours.sum(), student)[0]
        g_ref = torch.autograd.grad(ref.sum(), student)[0]
        torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-5)
    # K = V is the full divergence; a smaller K is a lower bound of it
    full = full_divergence(student, teacher, kind)
    torch.testing.assert_close(full_divergence(student, teacher, kind, 12), full, atol=1e-6, rtol=1e-5)
    assert bool((full_divergence(student, teacher, kind, 3) <= full + 1e-6).all())
    with pytest.raises(ValueError, match="divergence"):
        topk_tail_divergence(t_logp[:, :3], t_logp[:, :3], "tv")


def _batch(run):
    """One rollout batch of ``run`` with its teacher targets (no update)."""
    got = collect(run, 0, 0)
    batch = build_batch(got.rollouts, torch.zeros(len(got.rewards)), None, run.algo, run.rollout.group_size,
                        torch.Generator().manual_seed(0))
    return got, run.feedback_of(SelfDistiller).prepare(batch, got, 64, run.rollout.temperature)


def _distill_loss(run, batch):
    from rpt.algo.losses import CLIP_METRICS, PolicyTerms

    zeros = torch.zeros_like(batch.mask, dtype=torch.float32)
    terms = PolicyTerms(zeros, dict.fromkeys(CLIP_METRICS, batch.mask & False))
    out = batch.feedback_of(TeacherTargets).distill(terms, run.trainable.model, batch.rollouts,
                                                    range(len(batch.rollouts)), run.rollout.temperature)
    return out.loss[batch.mask].sum()


def _grads(run):
    return [p.main_grad.clone() if hasattr(p, "main_grad") else p.grad.clone()
            for p in run.trainable.model.module.parameters()]


def test_empty_feedback_makes_the_teacher_the_student(runtime, tokenizer):
    """``sibling`` feedback with no correct sibling is empty: the teacher prompt is the student's, its log-probs
    are the student's, and the loss and its gradient vanish."""
    run = rl_setup(rl_cfg(["algo=sdpo", "algo.sdpo.feedback=sibling", "algo.sdpo.top_k=20"]), runtime, tokenizer)
    run.task.reward = lambda item, text: 0.0  # nobody succeeds: no sibling to show
    got, batch = _batch(run)
    assert not batch.feedback_of(TeacherTargets).has_feedback.any()
    from rpt.train.rl_update import ForwardSettings, policy_values

    student = policy_values(run.trainable.model, got.rollouts, 4, False, ForwardSettings(run.rollout.temperature, 64))
    teacher = batch.feedback_of(TeacherTargets)
    torch.testing.assert_close(teacher.token_logp[batch.mask], student.logp[batch.mask], atol=1e-5, rtol=1e-5)
    run.trainable.zero_grad()
    loss = _distill_loss(run, batch)
    loss.backward()
    assert abs(float(loss)) < 1e-6
    assert max(float(g.abs().max()) for g in _grads(run)) < 1e-5


def test_rows_without_feedback_are_not_pulled_toward_a_drifted_teacher(runtime, tokenizer):
    """An EMA teacher differs from the student by drift; a response with no feedback (no correct sibling) gets no
    distillation term from it: zero loss and gradient, as with the current-weights teacher."""
    run = rl_setup(rl_cfg(["algo=sdpo", "algo.sdpo.feedback=sibling", "algo.sdpo.teacher=ema", "algo.sdpo.top_k=20"]),
                 runtime, tokenizer)
    run.task.reward = lambda item, text: 0.0  # nobody succeeds: no sibling to show
    torch.manual_seed(0)
    with torch.no_grad():  # the drift of a few EMA steps
        for p in run.feedback_of(SelfDistiller).teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    got, batch = _batch(run)
    assert not batch.feedback_of(TeacherTargets).has_feedback.any()
    run.trainable.zero_grad()
    loss = _distill_loss(run, batch)
    loss.backward()
    assert float(loss) == 0.0 and max(float(g.abs().max()) for g in _grads(run)) == 0.0


@pytest.mark.parametrize("kind", ["kl", "js"])
def test_stop_gradient_and_chunked_topk_match_a_full_logits_reference(kind, runtime, tokenizer):
    """With feedback (the reference), the loss gradient equals that of a reference computed from the student's
    full logits against constant teacher values: nothing flows through the teacher, and the chunked top-K path
    (chunks of 3 tokens, recomputed in the backward) is exact."""
    run = rl_setup(rl_cfg(["algo=sdpo", f"algo.sdpo.divergence={kind}", "algo.sdpo.top_k=16",
                       "algo.sdpo.chunk_tokens=3"]), runtime, tokenizer, DigitTask(tokenizer))
    got, batch = _batch(run)
    t = batch.feedback_of(TeacherTargets)
    assert t.has_feedback.all() and not t.logp.requires_grad and not t.token_logp.requires_grad
    run.trainable.zero_grad()
    loss = _distill_loss(run, batch)
    loss.backward()
    ours = _grads(run)

    run.trainable.zero_grad()
    ro, temp = batch.rollouts, run.rollout.temperature
    logits = full_logits(run.trainable.model, ro.tokens[:, :-1]) / temp
    student = torch.log_softmax(logits, -1)[batch.mask]  # [n_tokens, V] in (row, t) order
    ref = topk_tail_divergence(student.gather(-1, t.ids), t.logp, kind).sum()
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), atol=1e-5, rtol=1e-5)
    assert float(loss) > 1e-4  # the feedback moves the teacher
    for a, b in zip(ours, _grads(run), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("extra", [[], ["algo.sdpo.grpo_weight=1.0"], ["algo.sdpo.teacher=mix"]])
def test_sdpo_changes_training_and_logs_dense_credit(extra, runtime, tokenizer):
    base = ["algo.norm_adv_by_std=false"]
    grpo = rl_setup(rl_cfg(base), runtime, tokenizer, DigitTask(tokenizer))
    m_grpo, _ = rl_step(grpo, 0, 0)
    run = rl_setup(rl_cfg(["algo=sdpo", *base, *extra]), runtime, tokenizer, DigitTask(tokenizer))
    m, _ = rl_step(run, 0, 0)
    assert m["response_length"] == m_grpo["response_length"]  # same rollouts
    assert m["update_applied"] == 1.0 and m["sdpo_feedback_share"] == 1.0
    assert m["sdpo_credit_p10"] <= m["sdpo_credit_p50"] <= m["sdpo_credit_p90"]
    assert 0.0 <= m["sdpo_credit_high_entropy_share"] <= 1.0
    diff = max(float((a - b).abs().max()) for a, b in zip(policy_weights(run), policy_weights(grpo), strict=True))
    assert diff > 1e-6, "sdpo trained the same weights as grpo"


def test_ema_teacher_resumes_exactly(tmp_path, runtime, tokenizer):
    """Two steps uninterrupted equal one step, a checkpoint, a fresh process state loading it, and one more step:
    the EMA teacher (which drives step 2's loss) is part of the checkpoint."""
    overrides = ["algo=sdpo", "algo.sdpo.teacher=ema", "algo.sdpo.teacher_rate=0.5", "rpt.lr=0.01",
                 "rpt.min_lr=0.01", "rpt.warmup_steps=0"]
    assert_extra_model_resumes_exactly(lambda: rl_setup(rl_cfg(overrides), runtime, tokenizer, DigitTask(tokenizer)),
                                       lambda run: run.feedback_of(SelfDistiller).teacher,
                                       ("loss", "grad_norm", "reward_mean", "sdpo_credit_mean", "entropy"), tmp_path)


def test_bad_sdpo_settings_are_refused():
    for bad, match in (("algo.sdpo.feedback=hint", "feedback"), ("algo.sdpo.feedback=reference+", None),
                       ("algo.sdpo.teacher=frozen", "teacher"), ("algo.sdpo.divergence=tv", "divergence"),
                       ("algo.sdpo.top_k=0", "top_k")):
        if match is None:  # a trailing '+' is harmless
            assert rl_cfg(["algo=sdpo", bad]).algo.sdpo.feedback_kinds() == ["reference"]
            continue
        with pytest.raises(ValueError, match=match):
            rl_cfg(["algo=sdpo", bad])


@pytest.mark.parametrize("option", ["algo.sdpo.feedback=verifier", "algo.sdpo.feedback=reference+sibling",
                                    "algo.sdpo.divergence=kl", "algo.sdpo.top_k=3", "algo.sdpo.grpo_weight=1.0",
                                    "algo.sdpo.teacher=ema", "algo.sdpo.teacher=mix"])
def test_every_sdpo_option_changes_training(option, runtime, tokenizer):
    """From the same start and rollouts, each option trains other weights than default SDPO within two steps (the
    EMA / mixed teachers equal the student until it has moved once)."""
    common = ["algo=sdpo", "rpt.lr=0.01", "rpt.min_lr=0.01", "rpt.warmup_steps=0", "algo.sdpo.teacher_rate=0.5"]
    weights = []
    for extra in ([], [option]):
        run = rl_setup(rl_cfg([*common, *extra]), runtime, tokenizer, DigitTask(tokenizer))
        cursor = 0
        for step in range(2):
            _, cursor = rl_step(run, step, cursor)
        weights.append(policy_weights(run))
    assert max(float((a - b).abs().max()) for a, b in zip(*weights, strict=True)) > 1e-7, option
