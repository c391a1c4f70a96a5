"""Rollouts on vLLM (``rollout.engine=vllm``, ``rpt.rollout.vllm_engine``) against rpt's own lean decoder on the same
real megatron model: greedy rollouts equal token for token on ragged prompts (end of sequence included), the
weights follow an RL step, sampled log-probs equal the trainer's, first tokens follow the model's distribution,
the answer-stop rule cuts a row where the lean decoder would, and the weight check (``rollout.vllm.check_weights``)
passes after bf16 and ``.data`` updates and stops a stale or corrupted weight. The models have head size 32, the
smallest vLLM's CPU attention takes."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import pytest
import torch

pytest.importorskip("vllm")

from rpt.config_rl import VLLM_CPU_HEAD_DIMS  # noqa: E402
from rpt.model.forward import full_logits, sequence_logprobs  # noqa: E402
from rpt.rollout.engine import SamplingParams, generate, resolve_engine  # noqa: E402
from rpt.rollout.vllm_engine import rollouts_from  # noqa: E402
from tests.helpers import (  # noqa: E402
    compose_config,
    kill_at_checkpoint,
    rl_cfg,
    rl_setup,
    rpt_command,
    run_command,
    stage_rows,
)

VLLM_SHAPE = ["model.num_attention_heads=1", "model.num_query_groups=1"]  # the smoke model at head size 32
README_LINES = ("rpt pipeline experiment=smoke run.name=smoke_vllm rollout.engine=vllm model.num_attention_heads=1 "
                "model.num_query_groups=1",)  # run by the pipeline test below (tests/test_readme_coverage.py)
PROMPTS = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [5, 6, 7], [10, 11, 12, 13, 14, 15, 16], [40]]


def _model(runtime, vocab: int, qkv_bias: bool = True, tied: bool = True):
    """A real GPTModel with weights drawn wide enough that greedy decoding does not repeat one token."""
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    cpu_compat.seed_all(0)
    model = build_model(ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2,
                                    num_query_groups=1, qkv_bias=qkv_bias, tie_embeddings=tied), vocab)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, p.shape[1] ** -0.5) if p.dim() == 2 else p.add_(torch.randn_like(p) * 0.3)
    return model


def _greedy(n, eos_id=-1, engine="lean", stop=None):
    return SamplingParams(n, 0.0, eos_id=eos_id, pad_id=0, engine=engine, stop=stop)


def test_the_cpu_kv_cache_holds_the_models_whole_context():
    """An imported model keeps its context (SmolLM2-135M: 8,192 tokens), which vLLM refuses to serve from a cache
    that cannot hold one such sequence: 2 x 30 layers x 3 KV heads x 64 x 4 bytes x 8,192 = 360 MiB, plus a quarter."""
    from rpt.rollout.vllm_engine import CPU_KV_CACHE_MB, cpu_kv_cache_mb

    smol = dict(hidden_size=576, num_attention_heads=9, num_layers=30, num_query_groups=3, max_position_embeddings=8192)
    assert cpu_kv_cache_mb(smol, torch.float32) == 450  # (bfloat16: 225, under the 256 MB floor)
    assert cpu_kv_cache_mb(smol, torch.bfloat16) == CPU_KV_CACHE_MB
    assert cpu_kv_cache_mb({**smol, "max_position_embeddings": 512}, torch.float32) == CPU_KV_CACHE_MB


@pytest.mark.parametrize("qkv_bias, tied", [(True, True), (False, False)])  # Qwen2 tied, Llama untied
def test_greedy_rollouts_equal_the_lean_decoders(runtime, tokenizer, qkv_bias, tied):
    model = _model(runtime, tokenizer.vocab_size, qkv_bias, tied)
    free = generate(model, PROMPTS, _greedy(12), 0, "cpu")
    assert len({tuple(free.response_ids(i)) for i in range(len(PROMPTS))}) >= 3  # not one repeated answer
    eos = free.response_ids(3)[4]  # a token row 3 writes mid-way: rows now end at different lengths
    lean = generate(model, PROMPTS, _greedy(12, eos), 0, "cpu")
    vllm = generate(model, PROMPTS, _greedy(12, eos, "vllm"), 0, "cpu")
    assert lean.response_lens.tolist() != [12] * len(PROMPTS)
    for name in ("tokens", "prompt_lens", "response_mask", "truncated"):
        assert torch.equal(getattr(vllm, name), getattr(lean, name)), name
    assert not vllm.sample_logprobs.any()  # greedy: the sampling distribution is a point mass


def test_sampled_log_probs_equal_the_trainers_and_a_seed_repeats(runtime, tokenizer):
    model = _model(runtime, tokenizer.vocab_size)
    sampling = SamplingParams(10, 0.8, eos_id=-1, pad_id=0, engine="vllm")
    drawn = generate(model, PROMPTS * 4, sampling, 7, "cpu")
    assert torch.equal(generate(model, PROMPTS * 4, sampling, 7, "cpu").tokens, drawn.tokens)
    assert not torch.equal(generate(model, PROMPTS * 4, sampling, 8, "cpu").tokens, drawn.tokens)
    with torch.no_grad():
        trainer, _ = sequence_logprobs(model, drawn.tokens[:, :-1], drawn.tokens[:, 1:], temperature=0.8)
    mask = drawn.response_mask[:, 1:]
    gap = (trainer - drawn.sample_logprobs[:, 1:]).abs()[mask]
    assert gap.max() < 1e-4, gap.max()  # float32 on both sides: the train/rollout gap is rounding


def test_first_tokens_follow_the_models_distribution(runtime, tokenizer):
    """A chi-square goodness-of-fit test of 3,000 first tokens against softmax(logits / T) of a plain forward."""
    model = _model(runtime, tokenizer.vocab_size)
    prompt, n, temperature = [7, 8, 9], 3000, 1.3
    drawn = generate(model, [prompt] * n, SamplingParams(1, temperature, -1, 0, engine="vllm"), 1, "cpu")
    counts = torch.bincount(drawn.tokens[:, len(prompt)], minlength=tokenizer.vocab_size).double()
    with torch.no_grad():
        probs = torch.softmax(full_logits(model, torch.tensor([prompt]))[0, -1].double() / temperature, -1)
    expected = probs * n
    big = expected >= 5  # tokens expected at least 5 times each, the rest pooled into one bin
    observed = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    expected = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(chi2 / 2)))
    assert dof >= 10 and p_value > 1e-4, (chi2, dof, p_value)


def test_the_answer_stop_rule_cuts_where_the_lean_decoder_stops(tokenizer):
    """vLLM returns every token up to its cap; the rule then cuts a row after the token closing its answer box, as
    the lean decoder stops there. A row ending in end-of-sequence, and one at the cap, are left as they are."""
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput

    from rpt.reward.answer import BoxedAnswerStop

    answer = tokenizer.encode("so</think> \\boxed{ 7}")
    rows = [answer + tokenizer.encode(" and on"), tokenizer.encode("12 3") + [tokenizer.eos_id],
            tokenizer.encode("no answer at all, just words and words")]
    cap = max(len(r) for r in rows)

    def completion(ids):
        return CompletionOutput(0, "", ids, -1.0, [{t: Logprob(-0.5)} for t in ids], "length")

    sampling = SamplingParams(cap, 1.0, tokenizer.eos_id, tokenizer.pad_id, stop=BoxedAnswerStop(tokenizer.token_bytes))
    prompts = [[1, 2], [3], [4, 5, 6]]
    out = rollouts_from([completion(r) for r in rows], prompts, sampling)
    assert out.response_ids(0) == answer and out.response_ids(1) == rows[1] and out.response_ids(2) == rows[2]
    assert out.truncated.tolist() == [False, False, True]
    assert torch.equal(out.sample_logprobs[out.response_mask], torch.full((int(out.response_mask.sum()),), -0.5))


def test_the_weights_follow_an_rl_step(runtime, tokenizer):
    """One RL step with vLLM rollouts: its logged train/rollout gap is float rounding, and afterwards vLLM's greedy
    rollout equals the lean decoder's on the updated weights. The prompts compared are the same before and after
    the step and longer than one KV block (128 tokens on CPU), so a prompt KV cached from the old weights would
    show. A second engine (other settings) on the same model is synced on its own: each follows the step whichever
    generates first after it."""
    from rpt.config_rl import VLLMConfig
    from rpt.train.rl_loop import rl_step

    cfg = rl_cfg(["rollout.engine=vllm", *VLLM_SHAPE, "rpt.lr=0.05", "algo.entropy_coef=0.05"])
    run = rl_setup(cfg, runtime, tokenizer)
    model = run.trainable.model.module
    prompts = [(run.task.prompt_ids(p) * 60)[:150] for p in run.task.items]
    greedy = _greedy(8, tokenizer.eos_id)
    on_vllm, on_other = replace(greedy, engine="vllm"), replace(greedy, engine="vllm", vllm=VLLMConfig(kv_cache_mb=64))
    before = generate(model, prompts, on_vllm, 0, "cpu")
    assert torch.equal(generate(model, prompts, on_other, 0, "cpu").tokens, before.tokens)
    metrics, _ = rl_step(run, step=0, cursor=0)
    assert metrics["optimizer_steps"] >= 1 and metrics["train_rollout_gap"] < 1e-4
    assert metrics["token_mult_prob_error"] < 1.05  # the agreement gate, on vLLM
    lean_after = generate(model, prompts, greedy, 0, "cpu")
    assert not torch.equal(lean_after.tokens, before.tokens)  # the step changed what greedy decoding writes
    trained = [p.detach().clone() for p in model.parameters()]
    assert torch.equal(generate(model, prompts, on_other, 0, "cpu").tokens, lean_after.tokens)
    for p, kept in zip(model.parameters(), trained, strict=True):  # the sync hands vLLM the trainer's own tensors:
        assert torch.equal(p, kept)  # its loading must copy them, never write them
    assert torch.equal(generate(model, prompts, on_vllm, 0, "cpu").tokens, lean_after.tokens)


def test_vllm_follows_weights_written_through_data(runtime, tokenizer):
    """Weights written through ``.data`` (megatron's bf16 optimizer, fused kernels) leave the version counters
    unchanged; the write the trainer records (``note_weights_written``, called by every optimizer step and
    checkpoint load) makes the next generate resend them: vLLM's greedy rollout then equals the lean decoder's on
    the new weights."""
    from rpt.model.weight_writes import note_weights_written

    run = rl_setup(rl_cfg(["rollout.engine=vllm", *VLLM_SHAPE]), runtime, tokenizer)
    model = run.trainable.model.module
    prompts = [(run.task.prompt_ids(p) * 60)[:150] for p in run.task.items]
    greedy = _greedy(8, tokenizer.eos_id)
    before = generate(model, prompts, replace(greedy, engine="vllm"), 0, "cpu")
    versions = [p._version for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(torch.randn_like(p) * 0.5)
    assert [p._version for p in model.parameters()] == versions
    note_weights_written(run.trainable.model)
    lean = generate(model, prompts, greedy, 0, "cpu")
    assert not torch.equal(lean.tokens, before.tokens)
    assert torch.equal(generate(model, prompts, replace(greedy, engine="vllm"), 0, "cpu").tokens, lean.tokens)


def test_the_weight_check_passes_after_a_bf16_optimizer_step_and_recorded_data_writes(runtime, monkeypatch):
    """``rollout.vllm.check_weights`` (slime's ``--check-weight-update-equal``) reads every weight back from vLLM
    at each generate: after a real bf16 megatron optimizer step (its fp32 main weights copied into the model
    through ``.data``) and after a ``.data`` write the trainer records, vLLM's weights equal the trainer's."""
    from rpt.config import ModelConfig, PretrainConfig
    from rpt.config_rl import VLLMConfig
    from rpt.model import cpu_compat
    from rpt.model.weight_writes import note_weights_written
    from rpt.rollout.vllm_engine import engine_for
    from rpt.train.optim import build_trainable
    from tests.dp_scenarios import train_steps

    cpu_compat.seed_all(0)
    bf16 = replace(runtime, dtype=torch.bfloat16)
    trainable = build_trainable(ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2,
                                            num_query_groups=1), 97, bf16, PretrainConfig(lr=1e-2, warmup_steps=1), 4)
    model = trainable.model.module
    checked = VLLMConfig(kv_cache_mb=64, check_weights=True)
    engine = engine_for(model, torch.bfloat16, checked)
    held = engine.llm.apply_model(lambda m: len(list(m.parameters())))[0]
    compared, check = [], engine.check
    monkeypatch.setattr(engine, "check", lambda state: compared.append(check(state)) or compared[-1])
    sampling = SamplingParams(4, 0.0, eos_id=-1, pad_id=0, engine="vllm", vllm=checked)
    generate(model, PROMPTS, sampling, 0, "cpu")
    before = [p.detach().clone() for p in model.parameters()]
    train_steps(trainable, bf16, range(1))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}  # megatron's norms: float32
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))  # all were written
    generate(model, PROMPTS, sampling, 0, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(torch.randn_like(p) * 0.1)
    note_weights_written(trainable.model)
    generate(model, PROMPTS, sampling, 0, "cpu")
    assert compared == [held] * 3 and held == 17  # 2 layers x 7 (fused qkv weight and bias) + embedding, norm, head


def test_the_weight_check_stops_a_run_whose_vllm_weights_differ_from_the_trainers(runtime, tokenizer):
    """The check catches a write the trainer did not record (through ``.data``: no resend, vLLM keeps the old
    weights) and a weight changed inside vLLM after its sync: the next generate raises, naming the tensor and its
    max |Δ|. In float32 on CPU vLLM packs its linear weights for oneDNN (an empty parameter left behind), so the
    check reads ``down_proj`` back through its kernel; the final norm it reads directly. A recorded write heals both."""
    from rpt.config_rl import VLLMConfig
    from rpt.model.weight_writes import note_weights_written
    from rpt.rollout.vllm_engine import engine_for

    model = _model(runtime, tokenizer.vocab_size)
    checked = VLLMConfig(kv_cache_mb=64, check_weights=True)
    sampling = SamplingParams(4, 0.0, eos_id=-1, pad_id=0, engine="vllm", vllm=checked)
    generate(model, PROMPTS, sampling, 0, "cpu")  # synced and checked
    engine = engine_for(model, torch.float32, checked)
    assert engine.llm.apply_model(lambda m: m.model.layers[1].mlp.down_proj.weight.numel())[0] == 0  # packed
    with torch.no_grad():
        dict(model.named_parameters())["decoder.layers.1.mlp.linear_fc2.weight"].data[3, 5] += 0.5
    with pytest.raises(RuntimeError, match=r"check_weights: model\.layers\.1\.mlp\.down_proj\.weight differs from "
                                           r"the trainer's \(max \|Δ\| 0\.5\)"):
        generate(model, PROMPTS, sampling, 0, "cpu")
    note_weights_written(model)
    generate(model, PROMPTS, sampling, 0, "cpu")  # resent: equal again
    engine.llm.apply_model(lambda m: m.model.norm.weight.data.mul_(1.5))
    with pytest.raises(RuntimeError, match=r"check_weights: model\.norm\.weight differs .* \(max \|Δ\| "):
        generate(model, PROMPTS, sampling, 0, "cpu")
    note_weights_written(model)
    generate(model, PROMPTS, sampling, 0, "cpu")


def test_engine_choice_and_refusals(monkeypatch):
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from rpt import config as schema

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == VLLM_CPU_HEAD_DIMS
    assert resolve_engine("auto") == "auto" and resolve_engine("vllm") == "vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine("auto") == "vllm"  # with CUDA, vLLM is the default where it is installed
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"head sizes .* is 8: change model.num_attention_heads"):
        schema.load(compose_config("experiment=smoke", "rollout.engine=vllm"))
    cfg = schema.load(compose_config("experiment=smoke", "rollout.engine=vllm", *VLLM_SHAPE))
    assert cfg.rollout.engine == "vllm" and math.isclose(cfg.rollout.vllm.memory_share, 0.4)
    with pytest.raises(ValueError, match="memory_share"):
        schema.load(compose_config("experiment=smoke", "rollout.vllm.memory_share=0"))


@pytest.mark.e2e
def test_the_smoke_pipeline_on_vllm_reaches_its_report_and_a_killed_run_resumes_exactly(tmp_path):
    """`rpt pipeline experiment=smoke rollout.engine=vllm` (head size 32) writes its report; a run killed after the
    second RPT checkpoint resumes and logs every later metric of both RL stages exactly as the uninterrupted run
    (timings aside): each row's seed and the weights fix its rollouts, and a fresh engine holds the same state as
    a warm one, since the prefix cache is emptied at every weight sync."""

    def cmd(name: str) -> list[str]:  # the README's line, then this test's root, name and step counts
        return rpt_command(*README_LINES[0].split()[1:], f"run.root={tmp_path}", f"run.name={name}", "rpt.steps=6",
                           "rpt.checkpoint_every=1", "rpt.eval_every=3", "rpt.eval_size=12", "algo.entropy_coef=0.01")

    run_command(cmd("ref"), tmp_path)
    reference = tmp_path / "ref"
    assert (reference / "report" / "report.md").exists() and (reference / "done" / "report.json").exists()
    rows = stage_rows(reference, "rpt")
    assert len(rows) == 6 and all(r["train_rollout_gap"] < 1e-4 for r in rows)
    kill_at_checkpoint(cmd("killed"), tmp_path, tmp_path / "killed" / "checkpoints" / "rpt" / "latest", 2)
    assert not (tmp_path / "killed" / "done" / "rpt.json").exists()
    run_command(cmd("killed"), tmp_path)
    for stage in ("rpt", "rl_pretrain", "rl_rpt"):
        assert stage_rows(tmp_path / "killed", stage) == stage_rows(reference, stage), stage


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_tensor_parallel_rpt_steps_on_vllm_match_one_process(tmp_path):
    """Two tensor-parallel ranks gather the sharded weights for their engine (the first rank generates and
    broadcasts): they sample what one process samples (same response lengths, a train/rollout gap of float
    rounding) and log the same losses and entropies."""
    shape = ["model.hidden_size=64", "model.num_attention_heads=2", "model.num_query_groups=2"]
    base = ["experiment=smoke", f"run.root={tmp_path}", *shape]
    run_command(rpt_command("pipeline", "stages=[prep,pretrain,select]", "run.name=one", *base), tmp_path)
    shutil.copytree(tmp_path / "one", tmp_path / "tp2")
    rpt = ["rollout.engine=vllm", "algo.entropy_coef=0.01"]
    run_command(rpt_command("rpt", "run.name=one", *base, *rpt), tmp_path)
    run_command(rpt_command("rpt", "run.name=tp2", *base, *rpt, "run.tensor_parallel=2", nproc=2), tmp_path)
    one, two = stage_rows(tmp_path / "one", "rpt"), stage_rows(tmp_path / "tp2", "rpt")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert a["response_length"] == b["response_length"] and b["train_rollout_gap"] < 1e-4
        for key in ("loss", "entropy", "reward_mean"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (key, a[key], b[key])
