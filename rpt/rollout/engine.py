"""Batched, KV-cached sampling of completions: the lean decoder (``rpt.rollout.lean_decoder``) where the model
qualifies, megatron-core's ``StaticInferenceContext`` path otherwise (``rollout.engine`` chooses).

Each step feeds one token per sequence. The lean decoder prefills every prompt whole (ragged lengths, each row
at its own positions), so generation takes ``max_new_tokens`` steps whatever the spread of prompt lengths. The
megatron path advances all rows in lockstep instead: its cache is prefilled with the shortest prompt and a longer
prompt's remaining tokens are fed one per step (teacher forcing). Either way every token sits at the position a
plain causal forward over its own row gives it, so the trainer's recomputed log-probs are comparable with the
sampler's. Rows are written at per-row columns (``col``), right-padded, in the same layout for both.

The log-prob of every sampled token under the sampling distribution (``logits / temperature`` after top-p) is
kept for the train/rollout gap metric. The k-th generated token of row i is drawn with the uniform number
``U[i, k]`` of one table drawn up front from an explicit ``torch.Generator``, so a rollout is a pure function of
(weights, prompts, seed), whichever engine or prefill produced the logits: resumed runs reproduce it exactly and
the lean and megatron engines (used by one process and by tensor-parallel runs) sample the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from megatron.core.inference.contexts import StaticInferenceContext

from rpt.model.cpu_compat import megatron_cuda_calls
from rpt.reward.answer import BoxedAnswerStop
from rpt.rollout import lean_decoder

ENGINES = ("auto", "lean", "megatron")


@dataclass(frozen=True)
class SamplingParams:
    """How ``generate`` samples; built from ``RolloutConfig`` in one place (``from_rollout``), so training, eval
    and the benchmarks sample the same way."""

    max_new_tokens: int
    temperature: float  # 0: greedy
    eos_id: int
    pad_id: int
    top_p: float = 1.0
    engine: str = "auto"  # auto | lean | megatron (``make_decoder``)
    stop: BoxedAnswerStop | None = None  # ends a row once its answer box closes

    @classmethod
    def from_rollout(cls, rollout_cfg, tokenizer, **overrides) -> SamplingParams:
        stop = BoxedAnswerStop(tokenizer.token_bytes) if rollout_cfg.stop_at_answer else None
        params = cls(max_new_tokens=rollout_cfg.max_new_tokens, temperature=rollout_cfg.temperature,
                     eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, top_p=rollout_cfg.top_p,
                     engine=rollout_cfg.engine, stop=stop)
        return replace(params, **overrides)


@dataclass
class Rollouts:
    tokens: torch.Tensor  # [N, T] prompt + response, right-padded with pad_id
    prompt_lens: torch.Tensor  # [N]
    response_mask: torch.Tensor  # [N, T] True where the token was generated
    sample_logprobs: torch.Tensor  # [N, T] log-prob of generated tokens under the sampler (0 elsewhere)
    truncated: torch.Tensor  # [N] bool: ended by the max_new_tokens cap (no end-of-sequence, no closed answer)

    @property
    def response_lens(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def response_ids(self, i: int) -> list[int]:
        return self.tokens[i][self.response_mask[i]].tolist()

    def select(self, rows: torch.Tensor | slice) -> Rollouts:
        """The rollouts of ``rows`` (indices, a bool mask or a slice)."""
        return Rollouts(self.tokens[rows], self.prompt_lens[rows], self.response_mask[rows],
                        self.sample_logprobs[rows], self.truncated[rows])

    @staticmethod
    def concat(parts: list[Rollouts], pad_id: int) -> Rollouts:
        """Rows of every part, right-padded to the widest (no parts: an empty batch)."""
        if not parts:
            return Rollouts(torch.full((0, 1), pad_id, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                            torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0, 1), torch.zeros(0, dtype=torch.bool))
        width = max(p.tokens.shape[1] for p in parts)

        def cat(name, value):
            return torch.cat([torch.nn.functional.pad(getattr(p, name), (0, width - p.tokens.shape[1]), value=value)
                              for p in parts])

        return Rollouts(cat("tokens", pad_id), torch.cat([p.prompt_lens for p in parts]),
                        cat("response_mask", False), cat("sample_logprobs", 0.0),
                        torch.cat([p.truncated for p in parts]))


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
        return self.forward(tokens[:, :start]), torch.full_like(lens, start)


def make_decoder(model, batch: int, max_len: int, engine: str = "auto"):
    """``auto``: the lean decoder where the model qualifies, else megatron's path; ``lean`` / ``megatron``: force."""
    if engine not in ENGINES:
        raise ValueError(f"rollout.engine must be one of {ENGINES}, got {engine!r}")
    if engine == "lean" and not lean_decoder.supports(model):
        raise ValueError("rollout.engine=lean needs tensor/pipeline parallel size 1 and rpt's GPT architecture")
    if engine == "lean" or (engine == "auto" and lean_decoder.supports(model)):
        return lean_decoder.LeanDecoder(model, batch, max_len)
    return MegatronDecoder(model, batch, max_len)


@torch.inference_mode()
def generate(model, prompts: list[list[int]], sampling: SamplingParams, seed: int, device) -> Rollouts:
    """Complete every prompt once (replicate prompts G times beforehand for G samples each), as ``sampling``
    says; a pure function of (weights, prompts, sampling, seed)."""
    max_new_tokens, temperature, top_p = sampling.max_new_tokens, sampling.temperature, sampling.top_p
    eos_id, pad_id, stop = sampling.eos_id, sampling.pad_id, sampling.stop
    n = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    if int(lens.min()) < 1:
        raise ValueError("generate: every prompt needs at least one token")
    total = int(lens.max()) + max_new_tokens
    tokens = torch.full((n, total), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = torch.tensor(p, device=device)
    mask = torch.zeros(n, total, dtype=torch.bool, device=device)
    sample_lp = torch.zeros(n, total, dtype=torch.float32, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    capped = torch.zeros(n, dtype=torch.bool, device=device)
    uniforms = torch.rand(n, max_new_tokens, generator=torch.Generator().manual_seed(seed)).to(device)
    if stop is not None:
        stop.reset(n)
    was_training = model.training
    model.eval()
    decoder = make_decoder(model, n, total, sampling.engine)
    logits, col = decoder.prefill(tokens[:, :int(lens.max())], lens)  # col: the column each row writes next
    rows = torch.arange(n, device=device)
    while True:
        in_prompt = col < lens
        sampled, lp = _sample(logits, temperature, top_p,
                              uniforms[rows, (col - lens).clamp(0, max_new_tokens - 1)])
        gen = ~in_prompt & ~done
        tokens[rows, col] = torch.where(in_prompt, tokens[rows, col],
                                        torch.where(gen, sampled, torch.full_like(sampled, pad_id)))
        mask[rows, col] = gen
        sample_lp[rows, col] = torch.where(gen, lp, torch.zeros_like(lp))
        ended = sampled == eos_id
        if stop is not None:
            ids = sampled.tolist()
            for i in gen.nonzero().squeeze(-1).tolist():
                if stop.update(i, ids[i]):
                    ended[i] = True
        at_cap = col + 1 - lens >= max_new_tokens
        capped |= gen & at_cap & ~ended
        done |= gen & (ended | at_cap)
        if bool(done.all()) or int(col.max()) + 1 == total:
            break
        logits = decoder.forward(tokens[rows, col].unsqueeze(1))
        col = col + 1
    model.train(was_training)
    width = int((mask.any(0).nonzero().max() + 1) if mask.any() else lens.max())
    return Rollouts(tokens[:, :width].clone(), lens, mask[:, :width].clone(), sample_lp[:, :width].clone(), capped)
