"""Batched, KV-cached sampling of completions: the lean decoder (``rpt.rollout.lean_decoder``) where the model
qualifies, megatron-core's ``StaticInferenceContext`` path otherwise (``rollout.engine`` chooses).

Memory is a function of the configured budget, not of the call: the rows of one call are decoded in chunks of at
most ``max_batch_rows`` rows and ``max_kv_tokens`` KV-cache tokens (``plan_chunks``; 0 = no limit), and a row
that finishes (end of sequence, closed answer box, length cap) leaves its chunk at once: its KV-cache row and
state are compacted away (``keep``), so the decode work is the sum of the responses' lengths, not rows × the
longest. Chunks are cut between runs of identical prompts where they can be, so a GRPO group's prompt is still
prefilled once.

Each step feeds one token per sequence. The lean decoder prefills every prompt whole (ragged lengths, each row
at its own positions), so generation takes ``max_new_tokens`` steps whatever the spread of prompt lengths. The
megatron path advances all rows of a chunk in lockstep instead: its cache is prefilled with the shortest prompt
and a longer prompt's remaining tokens are fed one per step (teacher forcing). Either way every token sits at the
position a plain causal forward over its own row gives it, so the trainer's recomputed log-probs are comparable
with the sampler's. Rows are written at per-row columns (``col``), right-padded, in the same layout for both.

The log-prob of every sampled token under the sampling distribution (``logits / temperature`` after top-p) is
kept for the train/rollout gap metric. The k-th generated token of row i is drawn with the uniform number
``U[i, k]`` of one table drawn up front for the whole call from an explicit ``torch.Generator``, so a rollout is a
pure function of (weights, prompts, seed), whichever engine, prefill, chunking or batch composition produced the
logits: resumed runs reproduce it exactly, the lean and megatron engines (used by one process and by
tensor-parallel runs) sample the same tokens, and a budget changes memory and speed, never the samples (up to
float rounding of the logits at another batch size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from megatron.core.inference.contexts import StaticInferenceContext

from rpt.config_rl import ENGINES, VLLMConfig, vllm_installed
from rpt.errors import Refusal
from rpt.model.cpu_compat import megatron_cuda_calls
from rpt.reward.answer import AnswerFormat, BoxedAnswerStop
from rpt.rollout import lean_decoder
from rpt.rollout.rollouts import DecodeStats, Rollouts  # noqa: F401  (re-exported: callers import them here)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SamplingParams:
    """How ``generate`` samples; built from ``RolloutConfig`` in one place (``from_rollout``), so training, eval
    and the benchmarks sample the same way."""

    max_new_tokens: int
    temperature: float  # 0: greedy
    eos_id: int
    pad_id: int
    top_p: float = 1.0
    engine: str = "auto"  # auto | lean | megatron | vllm (``resolve_engine``, ``make_decoder``)
    stop: BoxedAnswerStop | None = None  # ends a row once its answer box closes
    max_batch_rows: int = 0  # most rows decoding at once (0: every row of the call)
    max_kv_tokens: int = 0  # most KV-cache tokens (rows x (longest prompt + max_new_tokens)) at once (0: no limit)
    vllm: VLLMConfig | None = None  # engine=vllm: how its engine is built (None: the defaults)

    @classmethod
    def from_rollout(cls, rollout_cfg, tokenizer, **overrides) -> SamplingParams:
        stop = AnswerFormat.of(rollout_cfg).stop(tokenizer.token_bytes) if rollout_cfg.stop_at_answer else None
        params = cls(max_new_tokens=rollout_cfg.max_new_tokens, temperature=rollout_cfg.temperature,
                     eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, top_p=rollout_cfg.top_p,
                     engine=rollout_cfg.engine, stop=stop, max_batch_rows=rollout_cfg.max_batch_rows,
                     max_kv_tokens=rollout_cfg.max_kv_tokens, vllm=rollout_cfg.vllm)
        return replace(params, **overrides)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, uniform: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row by inverting its CDF at ``uniform`` (``[rows]`` in [0, 1)); returns (tokens, their
    log-prob under the sampling distribution)."""
    if temperature <= 0:
        tok = logits.argmax(-1)
        return tok, torch.zeros_like(tok, dtype=torch.float32)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        keep = sorted_lp.exp().cumsum(-1) - sorted_lp.exp() < top_p
        sorted_lp = sorted_lp.masked_fill(~keep, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_lp)
        logp = torch.log_softmax(logp, dim=-1)
    cdf = logp.exp().cumsum(-1)
    point = (uniform * cdf[:, -1]).unsqueeze(-1)  # scaled by the float total, so every point lands in the CDF
    tok = torch.searchsorted(cdf, point, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    return tok, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)


class MegatronDecoder:
    """The reference incremental forward: megatron-core's own KV-cached inference path (any parallel layout)."""

    @megatron_cuda_calls
    def __init__(self, model, batch: int, max_len: int):
        self.model, self.ctx = model, StaticInferenceContext(batch, max_len)
        self.length = 0
        self.prefilled_rows = 0

    @megatron_cuda_calls
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        pos = torch.arange(self.length, self.length + s, device=tokens.device).unsqueeze(0).expand_as(tokens)
        if self.length:
            self.ctx.enable_decode_mode()
        logits = self.model(tokens, pos, None, inference_context=self.ctx, runtime_gather_output=True)
        self.length += s
        self.ctx.sequence_len_offset = self.length
        return logits[:, -1].float()

    def prefill(self, tokens: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shortest prompt's length of every row (lockstep): logits after it, and the column each row writes
        next; longer prompts' remaining tokens are fed by ``generate`` one per step."""
        start = int(lens.min())
        self.prefilled_rows = tokens.shape[0]
        return self.forward(tokens[:, :start]), torch.full_like(lens, start)

    def keep(self, rows: torch.Tensor) -> None:
        """Compact the cache to ``rows`` (indices into the current batch, ascending): they become rows
        0..len(rows)-1 and later calls feed only them (megatron's static cache takes a smaller batch)."""
        for key, value in self.ctx.key_value_memory_dict.values():  # [max_len, batch, groups, dim]
            key[:, :len(rows)] = key[:, rows]
            value[:, :len(rows)] = value[:, rows]


def resolve_engine(engine: str) -> str:
    """``auto`` means vLLM where it is installed and CUDA is present (the engine users trust at scale), rpt's own
    decoders otherwise (``make_decoder`` then picks); any other name stands."""
    if engine not in ENGINES:
        raise ValueError(f"rollout.engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto" and torch.cuda.is_available() and vllm_installed():
        return "vllm"
    return engine


def make_decoder(model, batch: int, max_len: int, engine: str = "auto"):
    """``auto``: the lean decoder where the model qualifies, else megatron's path; ``lean`` / ``megatron``: force."""
    if engine not in ENGINES or engine == "vllm":
        raise ValueError(f"rollout.engine for rpt's decoders must be one of auto | lean | megatron, got {engine!r}")
    if engine == "lean" and not lean_decoder.supports(model):
        raise ValueError("rollout.engine=lean needs tensor/pipeline parallel size 1 and rpt's GPT architecture")
    if engine == "lean" or (engine == "auto" and lean_decoder.supports(model)):
        return lean_decoder.LeanDecoder(model, batch, max_len)
    return MegatronDecoder(model, batch, max_len)


def prompt_runs(prompts: list[list[int]]) -> list[int]:
    """Lengths of the runs of identical consecutive prompts (a GRPO group's G copies form one run)."""
    runs: list[int] = []
    for i, p in enumerate(prompts):
        if i and p == prompts[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def plan_chunks(prompt_lens: list[int], runs: list[int], max_new_tokens: int, max_rows: int = 0,
                max_kv_tokens: int = 0) -> list[range]:
    """Consecutive row ranges that decode together: at most ``max_rows`` rows and ``max_kv_tokens`` cache tokens
    (rows x (the chunk's longest prompt + ``max_new_tokens``)) each, 0 meaning no limit. Whole runs of identical
    prompts are packed greedily so each is prefilled once; a run that does not fit an empty chunk is split."""
    if max_rows < 0 or max_kv_tokens < 0:
        raise ValueError(f"generate: budgets must be >= 0 (0 = no limit), got max_batch_rows={max_rows}, "
                         f"max_kv_tokens={max_kv_tokens}")
    need = max(prompt_lens, default=0) + max_new_tokens
    if max_kv_tokens and need > max_kv_tokens:
        raise ValueError(f"rollout.max_kv_tokens={max_kv_tokens} cannot hold one row: its longest prompt plus "
                         f"max_new_tokens is {need} tokens")

    def fits(start: int, end: int) -> bool:
        rows = end - start
        width = max(prompt_lens[start:end]) + max_new_tokens
        return (not max_rows or rows <= max_rows) and (not max_kv_tokens or rows * width <= max_kv_tokens)

    chunks, start, end = [], 0, 0
    for run in runs:
        run_end = end + run
        if fits(start, run_end):
            end = run_end
            continue
        if end > start:  # close the chunk before this run
            chunks.append(range(start, end))
            start = end
        while not fits(start, run_end):  # the run alone is too big: split it
            cut = start + 1
            while fits(start, cut + 1):
                cut += 1
            chunks.append(range(start, cut))
            start = cut
        end = run_end
    if end > start:
        chunks.append(range(start, end))
    return chunks


@torch.inference_mode()
def check_context(model, longest_prompt: int, max_new_tokens: int) -> None:
    """Refuse rollouts longer than the model's context (``model.max_position_embeddings``, the checkpoint's own after
    ``hf_import``; vLLM's ``max_model_len`` is the same number), for every engine alike: past it a model's positions
    mean nothing it was trained on, and vLLM would refuse the request."""
    context = getattr(model, "max_sequence_length", None)
    if context is not None and longest_prompt + max_new_tokens > context:
        raise Refusal(f"a rollout of a {longest_prompt}-token prompt plus up to {max_new_tokens} new tokens exceeds "
                      f"the model's context of {context} tokens (model.max_position_embeddings): shorten the prompts "
                      f"(select.max_context_tokens) or the responses (rollout.max_new_tokens, eval.max_new_tokens)")


def generate(model, prompts: list[list[int]], sampling: SamplingParams, seed: int, device) -> Rollouts:
    """Complete every prompt once (replicate prompts G times beforehand for G samples each), as ``sampling``
    says, within its row and KV-token budget; a pure function of (weights, prompts, sampling, seed)."""
    n = len(prompts)
    if n == 0:
        return Rollouts.concat([], sampling.pad_id)
    if min(len(p) for p in prompts) < 1:
        raise ValueError("generate: every prompt needs at least one token")
    check_context(model, max(len(p) for p in prompts), sampling.max_new_tokens)
    if resolve_engine(sampling.engine) == "vllm":
        from rpt.rollout import vllm_engine

        return vllm_engine.generate(model, prompts, sampling, seed, device)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    total = int(lens.max()) + sampling.max_new_tokens
    tokens = torch.full((n, total), sampling.pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = torch.tensor(p, device=device)
    out = Rollouts(tokens, lens, torch.zeros(n, total, dtype=torch.bool, device=device),
                   torch.zeros(n, total, dtype=torch.float32, device=device),
                   torch.zeros(n, dtype=torch.bool, device=device))
    # row i's k-th draw is U[i, k] whatever chunk or batch position row i decodes in
    uniforms = torch.rand(n, sampling.max_new_tokens, generator=torch.Generator().manual_seed(seed)).to(device)
    if sampling.stop is not None:
        sampling.stop.reset(n)
    chunks = plan_chunks(lens.tolist(), prompt_runs(prompts), sampling.max_new_tokens, sampling.max_batch_rows,
                         sampling.max_kv_tokens)
    was_training = model.training
    model.eval()
    try:
        for rows in chunks:
            _decode_chunk(model, torch.arange(rows.start, rows.stop, device=device), out, uniforms, sampling)
    finally:
        model.train(was_training)
    out.stats.chunks = len(chunks)
    log.debug("generate: %d rows in %d chunks, %s", n, len(chunks), out.stats)
    mask = out.response_mask
    width = int((mask.any(0).nonzero().max() + 1) if mask.any() else lens.max())
    return Rollouts(out.tokens[:, :width].clone(), lens, mask[:, :width].clone(),
                    out.sample_logprobs[:, :width].clone(), out.truncated, out.stats)


def _decode_chunk(model, rows: torch.Tensor, out: Rollouts, uniforms: torch.Tensor, sampling: SamplingParams):
    """Decode the global rows ``rows`` together into ``out``; a row leaves the batch as soon as it ends."""
    max_new_tokens, eos_id, stop = sampling.max_new_tokens, sampling.eos_id, sampling.stop
    lens = out.prompt_lens[rows]
    width = int(lens.max()) + max_new_tokens
    decoder = make_decoder(model, len(rows), width, sampling.engine)
    stats = out.stats
    stats.peak_rows = max(stats.peak_rows, len(rows))
    stats.peak_kv_tokens = max(stats.peak_kv_tokens, len(rows) * width)
    logits, col = decoder.prefill(out.tokens[rows, :int(lens.max())], lens)  # col: the column each row writes next
    stats.prefill_rows += decoder.prefilled_rows
    while True:
        in_prompt = col < lens
        sampled, lp = _sample(logits, sampling.temperature, sampling.top_p,
                              uniforms[rows, (col - lens).clamp(0, max_new_tokens - 1)])
        gen = ~in_prompt
        out.tokens[rows, col] = torch.where(in_prompt, out.tokens[rows, col], sampled)
        out.response_mask[rows, col] = gen
        out.sample_logprobs[rows, col] = torch.where(gen, lp, torch.zeros_like(lp))
        ended = sampled == eos_id
        if stop is not None:
            ids, global_rows = sampled.tolist(), rows.tolist()
            for i in gen.nonzero().squeeze(-1).tolist():
                if stop.update(global_rows[i], ids[i]):
                    ended[i] = True
        at_cap = col + 1 - lens >= max_new_tokens
        out.truncated[rows] = gen & at_cap & ~ended
        going = ~(gen & (ended | at_cap))
        if not bool(going.any()):
            return
        if not bool(going.all()):  # finished rows leave the batch: compact the cache and the row state
            keep = going.nonzero().squeeze(-1)
            decoder.keep(keep)
            rows, lens, col = rows[keep], lens[keep], col[keep]
        stats.row_steps += len(rows)
        logits = decoder.forward(out.tokens[rows, col].unsqueeze(1))
        col = col + 1
