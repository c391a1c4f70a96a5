"""`rpt bench` part ``memory``: peak memory of an RPT step (old-policy pass + update) and of entropy scoring at a
large vocabulary, before (every logit at once) vs after (the output layer in chunks of tokens, ``rpt.model.forward``),
and of the step against response length.

Each figure is measured in a fresh process (``python -m rpt.bench.memory SPEC OUT``), so one measurement's
high-water mark cannot leak into the next: on CPU the process's resident-set high-water mark
(``ru_maxrss``; torch's CPU allocations are invisible to ``tracemalloc``), on GPU the allocator's
``max_memory_allocated``. "Before" is ``logits_chunk_tokens=0`` for the step (all ``[tokens, V]`` logits at
once under plain autograd, the computation the chunked path replaced) and ``topk_entropy(full_logits(...))``
for scoring (the old scoring line). Both runs start from the same weights and tokens; the JSON carries the
largest difference of their log-probs, entropies, loss and gradient norm, so "same numbers out" is checked by
the same run. The model is shallow (``SHALLOW``) so that the logits dominate, as they do at 150k vocabularies.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rpt.peak_memory import MIB, peak_memory_bytes

log = logging.getLogger(__name__)

SHALLOW = {"num_layers": 1, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
           "num_query_groups": 2}
TOP_K = 16  # scoring's top-k (select's default)
_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _peak_mb(device: torch.device) -> float:
    return peak_memory_bytes(device) / MIB


def _synthetic_group(vocab: int, context: int, response: int, group: int, device):
    """One GRPO group: ``group`` random responses of ``response`` tokens to one random prompt of ``context``."""
    from rpt.rollout.engine import Rollouts

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, vocab, (1, context), generator=g).expand(group, context)
    tokens = torch.cat([prompt, torch.randint(5, vocab, (group, response), generator=g)], dim=1)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, context:] = True
    return Rollouts(tokens.to(device), torch.full((group,), context, device=device), mask.to(device),
                    torch.zeros(tokens.shape, device=device), torch.zeros(group, dtype=torch.bool, device=device))


def _rpt_step(spec: dict, rt, model_cfg) -> dict:
    from rpt.config import AlgoConfig, TrainLoopConfig
    from rpt.train.optim import build_trainable
    from rpt.train.rl_update import ForwardSettings, build_batch, policy_values, update

    vocab, group, response, chunk = spec["vocab"], spec["group"], spec["response"], spec["chunk"]
    trainable = build_trainable(model_cfg, vocab, rt, TrainLoopConfig(lr=1e-5, min_lr=1e-5, warmup_steps=0), 10)
    rollouts = _synthetic_group(vocab, spec["context"], response, group, rt.device)
    algo = AlgoConfig()
    setup = _peak_mb(rt.device)
    t0 = time.perf_counter()
    forward = ForwardSettings(temperature=1.0, micro_batch=group, chunk_tokens=chunk)
    old = policy_values(trainable.model, rollouts, group, True, forward)
    batch = build_batch(rollouts, torch.linspace(-1, 1, group), old, algo, group, torch.Generator().manual_seed(0))
    result = update(trainable, batch, algo, forward, 1, 1, response, rt.dp_size)
    seconds = time.perf_counter() - t0
    mask = batch.mask
    return {"peak_mb": _peak_mb(rt.device), "setup_mb": setup, "seconds": seconds,
            "logp": old.logp[mask].tolist(), "entropy": old.entropy[mask].tolist(),
            "loss": result.stats["loss"], "grad_norm": result.stats["grad_norm"]}


def _scoring(spec: dict, rt, model_cfg) -> dict:
    from rpt.model.build import build_model
    from rpt.model.forward import full_logits, sequence_topk_entropy, topk_entropy

    model = build_model(model_cfg, spec["vocab"], rt.dtype)
    model.eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, spec["vocab"], (spec["windows"], spec["context"]), generator=g).to(rt.device)
    setup = _peak_mb(rt.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if spec["chunk"] == 0:
            entropy = topk_entropy(full_logits(model, tokens), TOP_K)
        else:
            entropy = sequence_topk_entropy(model, tokens, TOP_K, spec["chunk"])
    return {"peak_mb": _peak_mb(rt.device), "setup_mb": setup, "seconds": time.perf_counter() - t0,
            "entropy": entropy.flatten().tolist()}


def probe(spec: dict) -> dict:
    """One measurement, in this (fresh) process: ``spec["kind"]`` is ``rpt_step`` or ``scoring``."""
    from types import SimpleNamespace

    from rpt import runtime
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat

    rt = runtime.init(SimpleNamespace(device=spec["device"], dtype="auto", seed=0, tensor_parallel=1,
                                      pipeline_parallel=1))
    try:
        cpu_compat.seed_all(0)
        longest = spec["context"] + spec["group"] * spec.get("response", 0) + 1
        model_cfg = ModelConfig(name="memory", max_position_embeddings=longest, **SHALLOW)
        return (_rpt_step if spec["kind"] == "rpt_step" else _scoring)(spec, rt, model_cfg)
    finally:
        runtime.shutdown()


def _measure(spec: dict) -> dict:
    """``probe(spec)`` in a child process."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        proc = subprocess.run([sys.executable, "-m", "rpt.bench.memory", json.dumps(spec), str(out)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    log.info("memory %s response=%s chunk=%d: peak %.0f MB (%.1f s)", spec["kind"], spec.get("response"),
             spec["chunk"], result["peak_mb"], result["seconds"])
    return result


def _max_diff(a: list[float], b: list[float]) -> float:
    return float((torch.tensor(a) - torch.tensor(b)).abs().max()) if a else 0.0


def _compare(before: dict, after: dict, keys: tuple[str, ...]) -> dict:
    out = {"before_peak_mb": before["peak_mb"], "after_peak_mb": after["peak_mb"],
           "peak_ratio": before["peak_mb"] / after["peak_mb"], "setup_mb": after["setup_mb"],
           "before_s": before["seconds"], "after_s": after["seconds"]}
    out.update({f"max_abs_{k}_diff": _max_diff(before[k], after[k]) for k in keys})
    return out


def bench_memory(cfg, rt) -> dict:
    """Peak memory before vs after at ``bench.memory_*`` shapes, and the step's peak against response length
    (main rank only: the children are single processes)."""
    bc = cfg.bench
    if not rt.is_main:
        return {}
    chunk = cfg.rpt.logits_chunk_tokens
    common = {"vocab": bc.memory_vocab_size, "context": bc.memory_context, "group": bc.memory_group_size,
              "device": rt.device.type}
    runs = {}
    for length in sorted(set(bc.memory_lengths) | {bc.memory_response}):
        for name, chunk_tokens in (("after", chunk), ("before", 0)):
            if name == "after" or length <= bc.memory_response:
                runs[length, name] = _measure({**common, "kind": "rpt_step", "response": length,
                                               "chunk": chunk_tokens})
    step = _compare(runs[bc.memory_response, "before"], runs[bc.memory_response, "after"], ("logp", "entropy"))
    for key in ("loss", "grad_norm"):
        step[f"{key}_before"] = runs[bc.memory_response, "before"][key]
        step[f"{key}_after"] = runs[bc.memory_response, "after"][key]
    scoring_spec = {**common, "kind": "scoring", "windows": bc.memory_scoring_windows, "group": 0}
    scoring = _compare(_measure({**scoring_spec, "chunk": 0}), _measure({**scoring_spec, "chunk": chunk}),
                       ("entropy",))
    table = [{"response": length, "after_peak_mb": runs[length, "after"]["peak_mb"],
              "before_peak_mb": runs[length, "before"]["peak_mb"] if (length, "before") in runs else None}
             for length in sorted({length for length, _ in runs})]
    return {**{k: v for k, v in common.items() if k != "device"}, "response": bc.memory_response,
            "logits_chunk_tokens": chunk, "model": SHALLOW, "meter": "cuda_max_allocated" if rt.device.type ==
            "cuda" else "process_max_rss", "rpt_step": step, "scoring": {"windows": bc.memory_scoring_windows,
                                                                          "top_k": TOP_K, **scoring},
            "by_response_length": table}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    Path(sys.argv[2]).write_text(json.dumps(probe(json.loads(sys.argv[1]))))
