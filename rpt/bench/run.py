"""`rpt bench` entry point: builds the model (and its HF peer), runs the parts named by ``bench.parts`` in order and
returns (and with ``bench.out`` writes) one JSON-able dict with the machine, the shapes and every part's figures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rpt.bench.hf_peer import hf_peer
from rpt.bench.memory import bench_memory
from rpt.bench.rollout import bench_rollout, bench_rollout_ragged
from rpt.bench.rpt_step import RptStepper, bench_rpt_step
from rpt.bench.scaling import bench_scoring_processes
from rpt.bench.scoring import bench_scoring
from rpt.bench.timing import Timing, ratio_spread
from rpt.bench.train import bench_train
from rpt.bench.trl_peer import bench_trl_grpo_step
from rpt.model.build import build_model
from rpt.peak_memory import MIB, peak_memory_bytes

log = logging.getLogger(__name__)


def _trl_step(hf, cfg, rt, vocab: int, bc) -> dict:
    """TRL's GRPOTrainer step, and with part ``rpt_step`` our RL step run after each of TRL's timed steps (TRL,
    ours, TRL, ours, ...): the ratio's two medians then come from the same minutes of the machine (both models and
    their optimizers are held at once). Without TRL our steps run back to back."""
    if "rpt_step" not in bc.parts:
        return {"trl_grpo_step": bench_trl_grpo_step(hf, cfg, vocab, bc)}
    stepper = RptStepper(cfg, rt, vocab, bc)
    trl = bench_trl_grpo_step(hf, cfg, vocab, bc, between_steps=stepper.step)
    while len(stepper.rows) < bc.repeats:  # TRL missing (or it stopped early): the rest back to back
        stepper.step()
    return {"trl_grpo_step": trl, "rpt_step": {**stepper.figures(), "paired_with_trl": "trl_skipped" not in trl}}


def run_bench(cfg, rt) -> dict:
    bc = cfg.bench
    vocab = cfg.model.vocab_size or bc.vocab_size
    model = build_model(cfg.model, vocab, rt.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    hf_keys = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "norm_epsilon", "qkv_bias", "tie_embeddings", "rotary_base", "max_position_embeddings")
    mc = {k: getattr(cfg.model, k) for k in hf_keys}
    mc["vocab_size"] = vocab
    hf = hf_peer(model, mc, rt.dtype) if bc.peers else None
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
        elif name == "memory":
            result["memory"] = bench_memory(cfg, rt)
        elif name == "rpt_step":
            if "trl_grpo_step" not in bc.parts:  # else timed step by step between TRL's steps, below
                result["rpt_step"] = bench_rpt_step(cfg, rt, vocab, bc)
        elif name == "trl_grpo_step":  # last: TRL trains the HF peer's weights in place
            result.update(_trl_step(hf or hf_peer(model, mc, rt.dtype), cfg, rt, vocab, bc))
        else:
            raise ValueError(f"bench.parts: unknown part {name!r} (rollout, rollout_ragged, train, scoring, "
                             "scoring_processes, memory, rpt_step, trl_grpo_step)")
        if isinstance(result.get(name), dict):  # the high-water mark so far (CPU: the process's, never reset)
            result[name]["peak_memory_mib"] = peak_memory_bytes(rt.device, reset=True) / MIB
    if "rpt_step_s" in result.get("rpt_step", {}) and "trl_grpo_step_s" in result.get("trl_grpo_step", {}):
        ours, trl = (Timing(tuple(result[part][f"{part}_times_s"])) for part in ("rpt_step", "trl_grpo_step"))
        result["rpt_step"]["rpt_step_speedup_vs_trl"] = trl.median / ours.median
        result["rpt_step"]["rpt_step_speedup_vs_trl_spread"] = ratio_spread(trl, ours)
        if result["rpt_step"].get("paired_with_trl"):  # each TRL step over the step of ours that followed it
            result["rpt_step"]["rpt_step_speedup_vs_trl_pairs"] = [t / o for t, o in zip(trl.times, ours.times,
                                                                                         strict=True)]
    if bc.out and rt.is_main:
        Path(bc.out).parent.mkdir(parents=True, exist_ok=True)
        Path(bc.out).write_text(json.dumps(result, indent=2) + "\n")
    return result
