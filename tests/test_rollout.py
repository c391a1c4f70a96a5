"""KV-cached lockstep generation on a real megatron GPTModel matches a plain causal forward, with both incremental
forwards: the lean decoder and megatron-core's own inference path."""

from dataclasses import replace

import pytest
import torch

from rpt.model.forward import full_logits, logprobs_and_entropy
from rpt.rollout.engine import SamplingParams, generate, make_decoder
from rpt.rollout.lean_decoder import LeanDecoder, supports
from rpt.rollout.shared_prompt_kv import RowGroups

ENGINES = ["lean", "megatron"]


def sampling(new, temperature, top_p=1.0, *, eos_id, pad_id, engine="auto"):
    return SamplingParams(new, temperature, eos_id, pad_id, top_p, engine)


def _greedy_without_cache(model, prompt, steps):
    tokens = list(prompt)
    for _ in range(steps):
        logits = full_logits(model, torch.tensor([tokens]))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("qkv_bias, tied", [(False, True), (True, False)])
def test_lean_decoder_logits_equal_a_plain_forward(runtime, qkv_bias, tied):
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    cpu_compat.seed_all(1)
    model = build_model(ModelConfig(num_layers=2, hidden_size=48, ffn_hidden_size=80, num_attention_heads=6,
                                    num_query_groups=2, qkv_bias=qkv_bias, tie_embeddings=tied), 97)
    model.eval()
    with torch.no_grad():  # random norms and biases, so a skipped or swapped one cannot hide
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.3)
    assert supports(model)
    tokens = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(0))
    tokens[1, :5] = tokens[0, :5]  # rows 0 and 1 share a prompt (prefilled once, cache copied), then diverge
    with torch.no_grad():
        reference = full_logits(model, tokens)
    decoder = LeanDecoder(model, batch=3, max_len=11)
    torch.testing.assert_close(decoder.forward(tokens[:, :5]), reference[:, 4], atol=1e-5, rtol=1e-5)
    for t in range(5, 11):
        torch.testing.assert_close(decoder.forward(tokens[:, t:t + 1]), reference[:, t], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prefill"):
        decoder.forward(tokens[:, :2])
    assert isinstance(make_decoder(model, 3, 11, "auto"), LeanDecoder)
    with pytest.raises(ValueError, match="engine"):
        make_decoder(model, 3, 11, "vllm")


def test_lean_decoder_ragged_prefill_equals_each_rows_own_forward(tiny_model):
    """Prompts of different lengths (two rows sharing one) are prefilled at once: the logits after each prompt, and
    after every later token, equal a plain forward over that row alone."""
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(3, 300, (n,), generator=g) for n in (7, 3, 7, 1)]
    rows.insert(1, rows[0].clone())  # rows 0 and 1 adjacent copies: prefilled once
    rows += [torch.tensor([9, 9, 4]), torch.tensor([9, 4])]  # different prompts that look alike once left-padded
    lens = torch.tensor([len(r) for r in rows])
    follow = torch.randint(3, 300, (len(rows), 4), generator=g)
    prompts = torch.zeros(len(rows), int(lens.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        prompts[i, :len(r)] = r
    decoder = LeanDecoder(tiny_model, batch=len(rows), max_len=int(lens.max()) + 4)
    steps = [decoder.prefill(prompts, lens)[0]] + [decoder.forward(follow[:, t:t + 1]) for t in range(3)]
    with torch.no_grad():
        for i, r in enumerate(rows):
            reference = full_logits(tiny_model, torch.cat([r, follow[i, :3]]).unsqueeze(0))[0]
            for t, logits in enumerate(steps):
                torch.testing.assert_close(logits[i], reference[len(r) - 1 + t], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("own_row", [True, False])
def test_shared_prompts_are_kept_once_and_survive_finished_rows(tiny_model, own_row):
    """Two groups of three rows share a prompt each (lengths 6 and 4: left-padded) and (``own_row``) one row has
    its own; without it every group starts full (the reshape path of ``RowGroups``). The shared prompts' keys and
    values are stored once per group and the rows' caches hold only generated tokens; as rows finish (a whole
    group among them), every remaining row's logits still equal a plain forward over it."""
    g = torch.Generator().manual_seed(7)
    a, b, c = (torch.randint(3, 300, (n,), generator=g) for n in (6, 4, 5))
    rows, new = [a, a, a, b, b, b, c][:7 if own_row else 6], 4
    follow = torch.randint(3, 300, (len(rows), new), generator=g)
    lens = torch.tensor([len(r) for r in rows])
    prompts = torch.zeros(len(rows), 6, dtype=torch.long)
    for i, r in enumerate(rows):
        prompts[i, :len(r)] = r
    decoder = LeanDecoder(tiny_model, batch=len(rows), max_len=6 + new)
    seen = {i: [logits] for i, logits in enumerate(decoder.prefill(prompts, lens)[0])}
    assert decoder.prompt_len == 6 and decoder.prompt_k[0].shape[0] == 2 + own_row
    assert decoder.k_cache[0].shape[2] == new and decoder.row_groups.full is not own_row
    alive = list(range(len(rows)))
    keeps = [None, [0, 2, 3, 6], [0, 1, 3]] if own_row else [None, [0, 2, 3], [0, 1]]  # then group b has no row
    for t, keep in enumerate(keeps):
        if keep is not None:
            decoder.keep(torch.tensor(keep))
            alive = [alive[k] for k in keep]
        for i, logits in zip(alive, decoder.forward(follow[alive, t:t + 1]), strict=True):
            seen[i].append(logits)
    with torch.no_grad():
        for i, got in seen.items():
            reference = full_logits(tiny_model, torch.cat([rows[i], follow[i, :len(got) - 1]]).unsqueeze(0))[0]
            for t, logits in enumerate(got):
                torch.testing.assert_close(logits, reference[len(rows[i]) - 1 + t], atol=1e-4, rtol=1e-4)
    assert [len(seen[i]) for i in range(len(rows))] == [4, 2, 4, 3, 2, 2, 4][:len(rows)]


def test_full_row_groups_gather_and_scatter_like_the_general_path():
    """When every group has all its rows, gather and scatter are reshapes: the same tensors as the indexed path."""
    groups = RowGroups.of(torch.arange(3).repeat_interleave(4), 3)
    assert groups.full and not RowGroups.of(torch.tensor([0, 0, 1]), 2).full
    general = replace(groups, full=False)
    x = torch.randn(12, 2, 3, 5)
    assert torch.equal(groups.gather(x), general.gather(x))
    y = torch.randn(3, 2, 4 * 3, 5)
    assert torch.equal(groups.scatter(y, 3), general.scatter(y, 3))
    assert torch.equal(groups.scatter(groups.gather(x), 3), x)


@pytest.mark.parametrize("engine", ENGINES)
def test_cached_greedy_matches_uncached_for_mixed_prompt_lengths(tiny_model, tokenizer, engine):
    prompts = [tokenizer.encode("3 + 4 = <think>"), tokenizer.encode("12 - 3 + 5 - 7 = <think>"), [5]]
    ro = generate(tiny_model, prompts, sampling(6, 0.0, eos_id=-1, pad_id=tokenizer.pad_id, engine=engine), 0, "cpu")
    for i, p in enumerate(prompts):
        assert ro.tokens[i, :len(p)].tolist() == p
        assert ro.response_ids(i) == _greedy_without_cache(tiny_model, p, 6)
        assert int(ro.response_lens[i]) == 6


@pytest.mark.parametrize("engine", ENGINES)
def test_sampler_logprobs_match_trainer_recompute(tiny_model, tokenizer, engine):
    prompts = [tokenizer.encode("1 + 2 = ")] * 4 + [tokenizer.encode("7 - 5 + 1 = ")] * 4
    ro = generate(tiny_model, prompts, sampling(8, 0.8, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                                engine=engine), 1, "cpu")
    with torch.no_grad():
        logp, _ = logprobs_and_entropy(full_logits(tiny_model, ro.tokens[:, :-1]) / 0.8, ro.tokens[:, 1:])
    m = ro.response_mask[:, 1:]
    assert m.any()
    assert torch.allclose(logp[m], ro.sample_logprobs[:, 1:][m], atol=1e-4)


def test_both_engines_sample_the_same_tokens(tiny_model, tokenizer):
    """The lean decoder (ragged prefill) and megatron's path (lockstep, teacher-forced prompts) draw the same
    samples for one seed: draws are indexed by (row, generated-token index), not by decoding step."""
    prompts = [tokenizer.encode("12 - 3 + 5 - 7 = <think>")] * 3 + [tokenizer.encode("1 + 2 = ")] * 3
    kw = dict(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    lean, megatron = (generate(tiny_model, prompts, sampling(8, 1.0, 0.9, engine=e, **kw), 7, "cpu") for e in ENGINES)
    assert torch.equal(lean.tokens, megatron.tokens) and torch.equal(lean.response_mask, megatron.response_mask)
    assert len(set(map(tuple, lean.tokens[:3].tolist()))) > 1  # a group's copies still differ
    torch.testing.assert_close(lean.sample_logprobs, megatron.sample_logprobs, atol=1e-5, rtol=1e-5)


def test_sampling_is_a_function_of_the_seed(tiny_model, tokenizer):
    prompts = [tokenizer.encode("1 + 2 = ")] * 4
    params = sampling(8, 1.0, 0.9, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    a, b, c = (generate(tiny_model, prompts, params, seed, "cpu") for seed in (3, 3, 4))
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_generation_stops_at_eos(tiny_model, tokenizer):
    # declare the greedy first token to be EOS: generation must stop right after it
    prompts = [tokenizer.encode("1 + 2 = ")] * 2
    with torch.no_grad():
        logits = full_logits(tiny_model, torch.tensor([prompts[0]]))
    first = int(logits[0, -1].argmax())
    ro = generate(tiny_model, prompts, sampling(5, 0.0, eos_id=first, pad_id=tokenizer.pad_id), 0, "cpu")
    assert ro.response_lens.tolist() == [1, 1]  # the EOS itself is the only response token



@pytest.mark.parametrize("engine", ["lean", "megatron"])
def test_a_rollout_past_the_models_context_is_refused(tiny_model, tokenizer, engine):
    """The model's context (model.max_position_embeddings: 512 here; an imported model's own) caps prompt plus
    response for every engine, as vLLM's max_model_len does: exactly at the context it runs, one past is refused."""
    from rpt.errors import Refusal

    context = tiny_model.max_sequence_length
    prompt = tokenizer.encode("1 + 2 = ")
    params = sampling(context - len(prompt), 0.0, eos_id=-1, pad_id=tokenizer.pad_id, engine=engine)
    if engine == "lean":  # (the megatron engine recomputes the whole sequence per token: 3x slower here)
        at_cap = generate(tiny_model, [prompt], params, 0, "cpu")
        assert at_cap.response_lens.tolist() == [context - len(prompt)]
    params = replace(params, max_new_tokens=context - len(prompt) + 1)
    with pytest.raises(Refusal, match=f"exceeds the model's context of {context} tokens"):
        generate(tiny_model, [prompt], params, 0, "cpu")


def test_sampling_params_come_from_the_rollout_config(tokenizer):
    """Training and eval sample the same way: engine, top_p and the stop rule come from ``RolloutConfig``; eval
    overrides only length and temperature."""
    from dataclasses import replace

    from rpt.config import RolloutConfig

    cfg = replace(RolloutConfig(), engine="megatron", top_p=0.9, stop_at_answer=True)
    params = SamplingParams.from_rollout(cfg, tokenizer, max_new_tokens=7, temperature=0.5)
    assert (params.engine, params.top_p, params.max_new_tokens, params.temperature) == ("megatron", 0.9, 7, 0.5)
    assert params.stop is not None and (params.eos_id, params.pad_id) == (tokenizer.eos_id, tokenizer.pad_id)
    assert SamplingParams.from_rollout(replace(cfg, stop_at_answer=False), tokenizer).stop is None


def test_truncation_is_flagged_only_for_rows_stopped_by_the_cap(tiny_model, tokenizer):
    prompts = [tokenizer.encode("1 + 2 = ")] * 2
    capped = generate(tiny_model, prompts, sampling(4, 0.0, eos_id=-1, pad_id=tokenizer.pad_id), 0, "cpu")
    assert capped.truncated.tolist() == [True, True] and capped.response_lens.tolist() == [4, 4]
    with torch.no_grad():
        first = int(full_logits(tiny_model, torch.tensor([prompts[0]]))[0, -1].argmax())
    ended = generate(tiny_model, prompts, sampling(4, 0.0, eos_id=first, pad_id=tokenizer.pad_id), 0, "cpu")
    assert ended.truncated.tolist() == [False, False]
    one = generate(tiny_model, prompts, sampling(1, 0.0, eos_id=first, pad_id=tokenizer.pad_id), 0, "cpu")
    assert one.truncated.tolist() == [False, False]  # the last allowed token is the end of sequence: not cut off


def test_chunks_pack_whole_prompt_runs_within_the_budget():
    from rpt.rollout.engine import plan_chunks, prompt_runs

    prompts = [[1, 2]] * 3 + [[3]] * 3 + [[4, 5, 6, 7]] * 2
    runs = prompt_runs(prompts)
    lens = [len(p) for p in prompts]
    assert runs == [3, 3, 2]
    assert plan_chunks(lens, runs, 4) == [range(0, 8)]  # no budget: one chunk
    assert plan_chunks(lens, runs, 4, max_rows=6) == [range(0, 6), range(6, 8)]
    assert plan_chunks(lens, runs, 4, max_rows=4) == [range(0, 3), range(3, 6), range(6, 8)]  # runs kept whole
    assert plan_chunks(lens, runs, 4, max_rows=2) == [range(0, 2), range(2, 3), range(3, 5), range(5, 6),
                                                      range(6, 8)]  # a run larger than the budget is split
    # KV tokens: rows x (the chunk's longest prompt + 4): 6 x 6 = 36 fits; the last run needs 2 x 8
    assert plan_chunks(lens, runs, 4, max_kv_tokens=36) == [range(0, 6), range(6, 8)]
    assert plan_chunks(lens, runs, 4, max_kv_tokens=40) == [range(0, 6), range(6, 8)]  # 7 x 8 = 56 > 40
    assert plan_chunks(lens, runs, 4, max_rows=1, max_kv_tokens=100) == [range(i, i + 1) for i in range(8)]
    with pytest.raises(ValueError, match="max_kv_tokens=7 cannot hold one row"):
        plan_chunks(lens, runs, 4, max_kv_tokens=7)
    with pytest.raises(ValueError, match=">= 0"):
        plan_chunks(lens, runs, 4, max_rows=-1)


def _ragged_end(model, tokenizer, prompts, engine="auto", seed=11):
    """A token id that, as the end of a row, ends the rows of a seeded sampling run at different lengths: the token
    found in the most rows when nothing stops them (draws do not depend on the end id, so prefixes stay the same)."""
    free = generate(model, prompts, sampling(10, 1.0, eos_id=-1, pad_id=tokenizer.pad_id, engine=engine), seed, "cpu")
    in_rows = sum(torch.bincount(free.tokens[i][free.response_mask[i]].unique(), minlength=tokenizer.vocab_size)
                  for i in range(len(prompts)))
    return int(in_rows.argmax())


@pytest.mark.parametrize("engine", ENGINES)
def test_a_row_budget_changes_batching_never_samples(tiny_model, tokenizer, engine):
    """Three prompts x 4 samples: under max_batch_rows=4 (or the KV tokens of 4 rows) at most 4 rows decode at
    once, in 3 chunks, and every token, mask, truncation flag and sampler log-prob equals the unbudgeted run;
    finished rows leave the batch, so the decode work is the sum of the responses, not rows x the longest."""
    prompts = [p for text in ("1 + 2 = ", "12 - 3 + 5 - 7 = <think>", "4 =") for p in [tokenizer.encode(text)] * 4]
    eos = _ragged_end(tiny_model, tokenizer, prompts, engine)
    params = sampling(10, 1.0, eos_id=eos, pad_id=tokenizer.pad_id, engine=engine)
    whole = generate(tiny_model, prompts, params, 11, "cpu")
    width = max(len(p) for p in prompts) + 10
    for budget in (dict(max_batch_rows=4), dict(max_kv_tokens=4 * width)):
        part = generate(tiny_model, prompts, replace(params, **budget), 11, "cpu")
        assert (whole.stats.chunks, whole.stats.peak_rows) == (1, 12)
        assert (part.stats.chunks, part.stats.peak_rows) == (3, 4), budget
        assert part.stats.peak_kv_tokens <= 4 * width < whole.stats.peak_kv_tokens
        assert torch.equal(part.tokens, whole.tokens) and torch.equal(part.response_mask, whole.response_mask)
        assert torch.equal(part.truncated, whole.truncated)
        torch.testing.assert_close(part.sample_logprobs, whole.sample_logprobs, atol=1e-5, rtol=1e-5)
    assert len(set(whole.response_lens.tolist())) > 2 and not bool(whole.truncated.all())
    # each row's decode steps: its tokens after the first, plus (megatron, lockstep) its prompt tokens past the
    # shortest prompt, fed one per step; a row that ends leaves, so the total is their sum, not rows x the longest
    steps = whole.response_lens - 1
    if engine == "megatron":
        steps = steps + whole.prompt_lens - whole.prompt_lens.min()
    assert whole.stats.row_steps == int(steps.sum()) < len(prompts) * int(steps.max())
    if engine == "lean":  # each distinct prompt is still prefilled once
        assert part.stats.row_steps == whole.stats.row_steps
        assert whole.stats.prefill_rows == part.stats.prefill_rows == 3


def test_the_stop_rule_follows_each_row_across_chunks(tiny_model, tokenizer):
    """The answer-box stop rule keeps its state per row of the call: with a budget of 3 rows (chunks that split
    a group) rows end where they end without one."""
    from rpt.reward.answer import BoxedAnswerStop

    prompts = [tokenizer.encode("1 + 2 = ")] * 4 + [tokenizer.encode("5 + 5 = ")] * 4
    answer = _ragged_end(tiny_model, tokenizer, prompts, seed=5)  # the token that answers: "</think>\\boxed{7}"

    def token_bytes(i):
        return b"</think>\\boxed{7}" if i == answer else b"x"

    params = replace(sampling(10, 1.0, eos_id=-1, pad_id=tokenizer.pad_id), stop=BoxedAnswerStop(token_bytes))
    whole = generate(tiny_model, prompts, params, 5, "cpu")
    part = generate(tiny_model, prompts, replace(params, max_batch_rows=3), 5, "cpu")
    assert part.stats.peak_rows == 3 and len(set(whole.response_lens.tolist())) > 2
    assert torch.equal(part.tokens, whole.tokens) and torch.equal(part.response_lens, whole.response_lens)


def test_rollout_budget_comes_from_the_config_and_is_validated(tokenizer):
    from rpt.config import RolloutConfig

    params = SamplingParams.from_rollout(RolloutConfig(max_batch_rows=16, max_kv_tokens=4096), tokenizer)
    assert (params.max_batch_rows, params.max_kv_tokens) == (16, 4096)
    with pytest.raises(ValueError, match="max_batch_rows"):
        RolloutConfig(max_batch_rows=-1)


def test_an_empty_call_returns_no_rows(tiny_model, tokenizer):
    assert len(generate(tiny_model, [], sampling(4, 1.0, eos_id=-1, pad_id=tokenizer.pad_id), 0, "cpu")) == 0
