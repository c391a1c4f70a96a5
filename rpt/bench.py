"""`rpt bench`: throughput of every phase, each against a peer measured in the same process, as JSON.

- rollout: prefill and decode tokens/s of our KV-cached sampler (and of megatron-core's own inference path), against
  HF ``transformers`` ``generate`` on the same architecture with the same weights (exported through
  ``rpt.model.hf``); ``rollout_ragged``: whole ``generate`` calls on prompts of different lengths (RPT's contexts);
- train: forward+backward+step tokens/s (and MFU on GPU), against a plain HF forward/backward + torch AdamW;
- scoring: top-k entropy scoring tokens/s against a plain forward over the same tokens, and (``scoring_processes``)
  the same scoring run by 1 and by 2 data-parallel processes (``rpt.bench_scaling``);
- rpt step: one full GRPO step on synthetic next-token tasks, broken down by phase, against one TRL
  ``GRPOTrainer`` step with the same weights, batch and rollout length (``rpt.bench_trl``; needs ``trl``).

Shapes come from the ``bench`` config group fields and the model from ``model=...``, so any Hydra override
works. Times are medians over ``bench.repeats`` after a warm-up; numbers are printed, never asserted.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.entropy import score_documents
from rpt.bench_scaling import bench_scoring_processes
from rpt.bench_trl import bench_trl_grpo_step
from rpt.model.build import build_model
from rpt.model.cpu_compat import shims_suspended
from rpt.model.forward import full_logits, lm_loss
from rpt.rollout.engine import generate, make_decoder

log = logging.getLogger(__name__)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _hf_peer(model, mc: dict, dtype):
    """The same weights in an HF transformers model (None if transformers is not installed)."""
    try:
        import transformers
    except ImportError:
        return None
    from rpt.model.hf import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, mc, tmp)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=dtype)
    return hf.to(next(model.parameters()).device)


def bench_rollout(model, hf, bc, vocab: int, device) -> dict:
    prompts = torch.randint(5, vocab, (bc.batch_size, bc.prompt_len), generator=torch.Generator().manual_seed(0))
    prompt_list = prompts.tolist()
    model.eval()

    def ours(engine):
        return lambda: generate(model, prompt_list, bc.new_tokens, 1.0, 1.0, eos_id=-1, pad_id=0, seed=0,
                                device=device, engine=engine)

    def prefill(engine):  # each engine's own prefill, subtracted from its own generate time below
        return lambda: make_decoder(model, bc.batch_size, bc.prompt_len + bc.new_tokens, engine).forward(
            prompts.to(device))

    n_new = bc.batch_size * bc.new_tokens
    with torch.inference_mode(), shims_suspended():
        prefill_s, megatron_prefill_s = _timed(prefill("auto"), bc.repeats), _timed(prefill("megatron"), bc.repeats)
    total_s = _timed(ours("auto"), bc.repeats)
    megatron_s = _timed(ours("megatron"), bc.repeats)
    out = {"prefill_tok_s": bc.batch_size * bc.prompt_len / prefill_s,
           "decode_tok_s": n_new / max(total_s - prefill_s, 1e-9),
           "engine": type(make_decoder(model, 1, 2)).__name__,
           "megatron_decode_tok_s": n_new / max(megatron_s - megatron_prefill_s, 1e-9)}
    if hf is not None:
        ids = prompts.to(device)
        kw = {"max_new_tokens": bc.new_tokens, "min_new_tokens": bc.new_tokens, "do_sample": True,
              "temperature": 1.0, "top_k": 0, "pad_token_id": 0}
        if device.type == "cuda":
            kw["cache_implementation"] = "static"
        with torch.inference_mode():
            hf_s = _timed(lambda: hf.generate(ids, **kw), bc.repeats)
            hf_prefill_s = _timed(lambda: hf(ids, use_cache=True), bc.repeats)
        out["hf_decode_tok_s"] = n_new / max(hf_s - hf_prefill_s, 1e-9)
        out["decode_speedup_vs_hf"] = out["decode_tok_s"] / out["hf_decode_tok_s"]
        out["generate_speedup_vs_hf"] = hf_s / total_s  # whole generate call, prefill included
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

    def ours(engine):
        return lambda: generate(model, prompt_list, bc.new_tokens, 1.0, 1.0, eos_id=-1, pad_id=0, seed=0,
                                device=device, engine=engine)

    out = {"prompt_lens": [min(lengths), max(lengths)], "generate_s": _timed(ours("auto"), bc.repeats),
           "megatron_generate_s": _timed(ours("megatron"), bc.repeats)}
    out["speedup_vs_megatron_path"] = out["megatron_generate_s"] / out["generate_s"]
    if hf is not None:
        width = max(lengths)
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_list):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        kw = {"max_new_tokens": bc.new_tokens, "min_new_tokens": bc.new_tokens, "do_sample": True,
              "temperature": 1.0, "top_k": 0, "pad_token_id": 0, "attention_mask": mask.to(device)}
        with torch.inference_mode():
            out["hf_generate_s"] = _timed(lambda: hf.generate(ids.to(device), **kw), bc.repeats)
        out["speedup_vs_hf"] = out["hf_generate_s"] / out["generate_s"]
    return out


def bench_train(model_cfg, vocab, rt, hf, bc, n_params: int) -> dict:
    from rpt.train.optim import build_trainable

    tc = type("T", (), {"lr": 1e-4, "min_lr": 1e-4, "weight_decay": 0.0, "clip_grad": 1.0, "warmup_steps": 0})
    trainable = build_trainable(model_cfg, vocab, rt, tc, 10_000)
    tokens = torch.randint(5, vocab, (bc.batch_size, bc.train_seq_len + 1)).to(rt.device)

    def ours():
        trainable.zero_grad()
        with shims_suspended():
            lm_loss(trainable.model, tokens).backward()
        trainable.step()

    ours_s = _timed(ours, bc.repeats)
    n_tok = bc.batch_size * bc.train_seq_len
    out = {"train_tok_s": n_tok / ours_s}
    if rt.device.type == "cuda":
        out["mfu"] = 6 * n_params * n_tok / ours_s / bc.peak_flops
    if hf is not None:
        hf.train()
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.0)

        def peer():
            opt.zero_grad(set_to_none=True)
            hf(tokens[:, :-1], labels=tokens[:, :-1]).loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            opt.step()

        peer_s = _timed(peer, bc.repeats)
        out["hf_train_tok_s"] = n_tok / peer_s
        out["train_speedup_vs_hf"] = out["train_tok_s"] / out["hf_train_tok_s"]
        if rt.device.type == "cuda":
            out["hf_mfu"] = 6 * n_params * n_tok / peer_s / bc.peak_flops
    return out


def bench_scoring(model, bc, vocab: int, rt) -> dict:
    """Scoring spreads the documents over data-parallel ranks (and gathers the results); the plain forward peer
    runs over this rank's share, so under several processes both figures are for the whole corpus."""
    device = rt.device
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, vocab, size=bc.train_seq_len).astype(np.int64) for _ in range(bc.batch_size * 2)]
    batch = torch.from_numpy(np.stack(docs[rt.dp_rank::rt.dp_size])).to(device)
    score_s = _timed(lambda: score_documents(model, docs, bc.train_seq_len, 16, bc.batch_size, device, rt.dp_rank,
                                             rt.dp_size), bc.repeats)

    def plain():
        with torch.inference_mode(), shims_suspended():
            for s in range(0, len(batch), bc.batch_size):
                full_logits(model, batch[s:s + bc.batch_size])

    plain_s = _timed(plain, bc.repeats)
    n_tok = len(docs) * bc.train_seq_len
    return {"scoring_tok_s": n_tok / score_s, "plain_forward_tok_s": n_tok / plain_s,
            "scoring_vs_plain_forward": plain_s / score_s}


def bench_rpt_step(cfg, rt, vocab: int, bc) -> dict:
    from rpt.rundir import RunDir
    from rpt.stages.context import StageContext
    from rpt.train.optim import build_trainable
    from rpt.train.rl_loop import rl_step

    class SyntheticNextToken:
        """Random contexts; reward = the response's first token equals a random target (verifiable, cheap)."""

        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.items = [(torch.randint(5, vocab, (bc.prompt_len,), generator=g).tolist(),
                           int(torch.randint(5, vocab, (1,), generator=g))) for _ in range(256)]
            self.tokenizer = None

        def items_for_step(self, step, count, seed):
            return [self.items[(step * count + i) % len(self.items)] for i in range(count)]

        def prompt_ids(self, item):
            return item[0]

        def reward(self, item, response_text):
            return float(response_text[:1] == chr(65 + item[1] % 26))

    class ByteTok:
        eos_id, pad_id = -1, 0

        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

        def token_bytes(self, i):
            return bytes([65 + i % 26])

    trainable = build_trainable(cfg.model, vocab, rt, cfg.rpt, 10_000)
    ctx = StageContext(cfg=cfg, rt=rt, rd=RunDir(tempfile.gettempdir(), "rpt-bench"), stage="bench")
    task = SyntheticNextToken()
    rl_step(ctx, trainable, task, ByteTok(), 0, cfg.rpt)  # warm-up
    rows, totals = [], []
    for s in range(1, bc.repeats + 1):
        t0 = time.perf_counter()
        rows.append(rl_step(ctx, trainable, task, ByteTok(), s, cfg.rpt))
        totals.append(time.perf_counter() - t0)
    keys = ["rollout_s", "score_s", "update_s", "tokens_per_s", "response_length"]
    out = {f"rpt_step_{k}": statistics.median(r[k] for r in rows) for k in keys}
    out["rpt_step_s"] = statistics.median(totals)
    return out


def run_bench(cfg, rt) -> dict:
    bc = cfg.bench
    vocab = cfg.model.vocab_size or bc.vocab_size
    model = build_model(cfg.model, vocab, rt.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    mc = {k: cfg.model[k] for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                                    "num_query_groups", "norm_epsilon", "qkv_bias", "tie_embeddings",
                                    "rotary_base", "max_position_embeddings")}
    mc["vocab_size"] = vocab
    hf = _hf_peer(model, mc, rt.dtype) if bc.peers else None
    result = {"device": torch.cuda.get_device_name() if rt.device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": str(rt.dtype),
              "model": cfg.model.name, "params": n_params,
              "shape": {"batch": bc.batch_size, "prompt_len": bc.prompt_len, "new_tokens": bc.new_tokens,
                        "train_seq_len": bc.train_seq_len}}
    for name in bc.parts:
        log.info("bench: %s", name)
        if name == "rollout":
            result["rollout"] = bench_rollout(model, hf, bc, vocab, rt.device)
        elif name == "rollout_ragged":
            result["rollout_ragged"] = bench_rollout_ragged(model, hf, bc, vocab, rt.device)
        elif name == "train":
            result["train"] = bench_train(cfg.model, vocab, rt, hf, bc, n_params)
        elif name == "scoring":
            result["scoring"] = bench_scoring(model, bc, vocab, rt)
        elif name == "scoring_processes":
            result["scoring_processes"] = bench_scoring_processes(bc)
        elif name == "rpt_step":
            result["rpt_step"] = bench_rpt_step(cfg, rt, vocab, bc)
        elif name == "trl_grpo_step":  # last: TRL trains the HF peer's weights in place
            result["trl_grpo_step"] = bench_trl_grpo_step(hf or _hf_peer(model, mc, rt.dtype), cfg, vocab, bc)
        else:
            raise ValueError(f"bench.parts: unknown part {name!r} (rollout, rollout_ragged, train, scoring, "
                             "scoring_processes, rpt_step, trl_grpo_step)")
    if "rpt_step_s" in result.get("rpt_step", {}) and "trl_grpo_step_s" in result.get("trl_grpo_step", {}):
        result["rpt_step"]["rpt_step_speedup_vs_trl"] = (result["trl_grpo_step"]["trl_grpo_step_s"]
                                                         / result["rpt_step"]["rpt_step_s"])
    if bc.out and rt.is_main:
        Path(bc.out).parent.mkdir(parents=True, exist_ok=True)
        Path(bc.out).write_text(json.dumps(result, indent=2) + "\n")
    return result
