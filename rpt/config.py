"""Structured config schema for every stage (Hydra + OmegaConf dataclasses).

The YAML files under ``conf/`` only choose group entries and override values; the types, defaults and the
one-line meaning of every field live here. Because the composed config is built on these dataclasses, a
misspelled or mistyped override (``pretrain.stpes=3``, ``model.hidden_size=big``) is an error naming the key,
never a silently ignored default.

The CLI turns the composed config into these dataclasses once (``load``); each section's ``__post_init__``
checks its enum-like fields and cross-field rules there, so a bad value fails before any stage starts, and
library code receives typed sections (``AlgoConfig``, ``RolloutConfig``, ...), never untyped slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

# the RL sections live in their own module (rpt/config_rl.py) and are part of this schema
from rpt.config_lm_eval import LMEvalConfig
from rpt.config_rl import (  # noqa: F401
    ENGINES,
    OPTIMIZERS,
    V0_PROMPT,
    VLLM_CPU_HEAD_DIMS,
    AlgoConfig,
    CntConfig,
    CritiqueConfig,
    RewardConfig,
    RolloutConfig,
    SelfDistillConfig,
    TrainLoopConfig,
    VLLMConfig,
    _one_of,
)

RECOMPUTE = ("none", "selective", "full")  # model.recompute


_SAFE_NAME = re.compile(r"[A-Za-z0-9._+=,-]{1,128}")  # one path component, no spaces (sweeps write seed=1,...)


@dataclass
class RunConfig:
    name: str = "demo"  # run name; artifacts go to <root>/<name>/
    root: str = "runs"  # parent directory of all run directories
    seed: int = 1234  # global seed (python, numpy, torch, megatron RNG tracker)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on GPU, float32 on CPU) | float32 | bfloat16
    tensor_parallel: int = 1  # megatron tensor-model-parallel size
    pipeline_parallel: int = 1  # megatron pipeline-model-parallel size (1 only for now)
    log_level: str = "INFO"  # python logging level for library code
    save_before_minutes: float = 0.0  # time budget: checkpoint and exit for requeue (status 99) when less than
    # this plus one step is left before the job's end (RPT_DEADLINE or SLURM_JOB_END_TIME, unix seconds); 0: off

    def __post_init__(self):
        if not _SAFE_NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise ValueError(f"run.name must be one directory name (letters, digits, '.', '_', '-', '+', '=', ','; "
                             f"not '.' or '..'), got {self.name!r}: e.g. run.name=my_run, and run.root=<dir> for "
                             f"where runs go")
        _one_of("run", "device", self.device, ("auto", "cpu", "cuda"))
        _one_of("run", "dtype", self.dtype, ("auto", "float32", "bfloat16"))
        if not self.save_before_minutes >= 0:
            raise ValueError(f"run.save_before_minutes must be >= 0 (0 = no time budget), "
                             f"got {self.save_before_minutes}")


@dataclass
class ModelConfig:
    name: str = "tiny"  # label used in logs and reports
    num_layers: int = 4  # transformer layers
    hidden_size: int = 128  # model width
    ffn_hidden_size: int = 384  # SwiGLU inner width
    num_attention_heads: int = 4  # query heads
    num_query_groups: int = 2  # key/value heads (grouped-query attention)
    norm_epsilon: float = 1e-6  # RMSNorm epsilon
    qkv_bias: bool = True  # bias on the QKV projection (Qwen2 style)
    tie_embeddings: bool = True  # share input embedding and output projection
    rotary_base: int = 10000  # RoPE base frequency
    max_position_embeddings: int = 512  # longest sequence the model is built for
    init_std: float = 0.02  # std of the normal weight init
    fused_swiglu: bool = False  # megatron's torch.compile'd SwiGLU (~7% faster training on CPU after a compile
    # of a few seconds per process and shape; worth it for long runs, on GPU especially)
    vocab_size: int | None = None  # None: take the tokenizer's vocabulary size
    recompute: str = "none"  # activation recomputation in training: none | selective (core attention) | full (every
    # layer's input is kept, the layer recomputed in backward: least memory, ~1/3 more compute)
    distributed_optimizer: bool = False  # megatron's distributed optimizer: Adam state and fp32 main weights sharded
    # over data-parallel ranks (ZeRO-1); same training math; a checkpoint resumes only with the setting that saved it

    def __post_init__(self):
        _one_of("model", "recompute", self.recompute, RECOMPUTE)


@dataclass
class DataConfig:
    source: str = "demo"  # demo | path to .jsonl/.json/.parquet/.txt file(s) (glob ok) | hub dataset name
    text_field: str = "text"  # field holding document text for jsonl/parquet/hub sources
    text_template: str | None = None  # a document from several record fields instead of `text_field`, e.g.
    # "{problem}\n\n{solution}" (OmniMATH); a record missing a named field is counted and skipped
    hub_config: str | None = None  # hub dataset config name
    hub_split: str = "train"  # hub dataset split
    streaming: bool = False  # stream the source instead of loading it into memory
    max_docs: int | None = None  # cap on documents read from a user source
    max_doc_chars: int = 200000  # longer documents are counted as bad and skipped
    rpt_fraction: float = 0.5  # user sources: share of documents routed to the RPT split (rest pretrain; 1.0: all,
    # for a run that imports its base and pretrains nothing)
    # the RPT split's documents: train / validation / test (data_prep/doc_splits.py), decided by prep
    heldout_fraction: float = 0.25  # share of RPT-split documents held out (validation + test)
    validation_fraction: float = 0.5  # share of the held-out documents that validate (tuning, val/* during training);
    # the rest is the test split `eval` reports
    contamination_ngram: int = 13  # word n-gram length of the held-out vs training overlap (GPT-3, lm-eval: 13)
    near_duplicate: float = 0.8  # a held-out document with this share of its n-grams in training is a near duplicate
    decontaminate: bool = False  # drop held-out documents the training splits contain (any shared n-gram, or an
    # exact duplicate) from validation and test
    # demo corpus (reasoning-gym chain_sum problems rendered as text documents)
    demo_task: str = "chain_sum"  # reasoning-gym generator used for the demo corpus
    demo_min_terms: int = 2  # fewest operands per problem
    demo_max_terms: int = 4  # most operands per problem
    demo_digits: int = 1  # digits per operand
    demo_nonnegative: bool = True  # keep only problems whose running total never drops below zero
    demo_operators: list[str] = field(default_factory=lambda: ["+"])  # keep only problems using these operators
    num_pretrain_docs: int = 6000  # pretraining documents (mix of worked and bare)
    num_rpt_docs: int = 400  # documents of the RPT split (bare results, as a math corpus states them)
    problems_per_doc: int = 4  # problems per demo document
    worked_fraction: float = 0.5  # share of pretraining documents that carry worked <think> solutions
    # tokenizer
    vocab_size: int = 320  # sentencepiece vocabulary size (byte fallback adds 256 byte pieces)
    tokenizer_type: str = "bpe"  # bpe | unigram
    digit_group: int = 1  # digits per number token, cut left to right (1: every digit alone; 2: "00".."99" are tokens;
    # 3: Llama 3's grouping). With every number of the corpus in one group, no position falls inside a number
    tokenizer_sample_docs: int = 200000  # user sources: the tokenizer trains on the first this-many good documents
    seq_length: int = 128  # tokens per training sequence

    def __post_init__(self):
        _one_of("data", "tokenizer_type", self.tokenizer_type, ("bpe", "unigram"))
        for name in ("heldout_fraction", "validation_fraction", "near_duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.contamination_ngram < 1:
            raise ValueError(f"data.contamination_ngram must be >= 1, got {self.contamination_ngram}")
        _one_of("data", "digit_group", self.digit_group, (1, 2, 3))
        number_pieces = sum(10 ** width for width in range(2, self.digit_group + 1))
        if number_pieces and self.vocab_size < number_pieces + 300:
            raise ValueError(f"data.vocab_size={self.vocab_size} leaves no room for the {number_pieces} number "
                             f"pieces of data.digit_group={self.digit_group}: set data.vocab_size >= "
                             f"{number_pieces + 300}")
        if self.text_template is not None:
            import string

            try:
                names = [name for _, name, _, _ in string.Formatter().parse(self.text_template) if name is not None]
            except ValueError as err:
                raise ValueError(f"data.text_template {self.text_template!r}: {err}") from None
            if not names or not all(name.isidentifier() for name in names):
                raise ValueError(f"data.text_template needs named record fields such as {{problem}} ({{{{ }}}} for a "
                                 f"literal brace), got {self.text_template!r}")


@dataclass
class PretrainConfig:
    steps: int = 2400  # optimizer steps
    micro_batch_size: int = 16  # sequences per micro-batch per data-parallel rank
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # final learning rate (cosine)
    warmup_steps: int = 50  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    optimizer: str = "adam"  # adam (AdamW) | sgd (megatron's, momentum 0.9: an update proportional to the gradient,
    # so runs that differ only in summation order end within rounding of each other, which Adam's sign-like
    # first steps do not; the layout-equivalence tests use it)
    clip_grad: float = 1.0  # global gradient-norm clip
    log_every: int = 20  # steps between metric logs
    checkpoint_every: int = 200  # steps between checkpoints

    def __post_init__(self):
        _one_of("pretrain", "optimizer", self.optimizer, OPTIMIZERS)


@dataclass
class ProxyConfig(PretrainConfig):
    """Stage `proxy`: a separate, smaller selection proxy pretrained on the pretraining split (the RPT paper filters
    its training positions with R1-Distill-Qwen-1.5B, not with the 14B model it trains and evaluates). Its shape is
    `model`'s with these fields changed (None: the same)."""

    steps: int = 300  # optimizer steps
    num_layers: int | None = None  # e.g. 2 beside the tiny model's 4
    hidden_size: int | None = None  # e.g. 64 beside 128 (with ffn_hidden_size=192, num_attention_heads=2)
    ffn_hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_query_groups: int | None = None

    def model_config(self, model: ModelConfig) -> ModelConfig:
        shape = {k: getattr(self, k) for k in PROXY_SHAPE if getattr(self, k) is not None}
        return replace(model, name=f"{model.name}-proxy", **shape)


PROXY_SHAPE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups")


@dataclass
class SelectConfig:
    proxy: str = "pretrain"  # proxy model: a stage's latest checkpoint (pretrain | hf | proxy: the separate smaller
    # model of stage `proxy`) or a checkpoint directory of `model`'s shape
    heldout_scorer: str | None = None  # whose entropy buckets the held-out positions (the evaluated base, as in the
    # paper): pretrain | hf | a checkpoint directory; None: the proxy, or `pretrain` when the proxy is `proxy`
    top_k: int = 16  # entropy over the proxy's top-k next tokens, renormalised
    mode: str = "threshold"  # threshold | top_fraction | random
    threshold: float = 0.5  # keep positions whose top-k entropy exceeds this (threshold mode)
    top_fraction: float = 0.2  # keep this share of positions (top_fraction and random modes)
    max_entropy: float | None = None  # drop positions above this (near-uniform: noise no reasoning predicts)
    min_context_tokens: int = 4  # skip positions with a shorter prefix
    max_context_tokens: int = 96  # context cut from the left to this many tokens
    max_target_tokens: int = 32  # ground-truth remainder stored per position (reward boundaries)
    max_per_doc: int = 64  # cap on selected positions per document
    difficulty_thresholds: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5])  # easy/medium/hard
    batch_size: int = 32  # sequences per scoring forward
    shard_docs: int = 1000  # documents per scoring shard (the unit of resumption and of select's memory)
    window_overlap: int | None = None  # tokens a scoring window shares with the one before, so every token t is
    # scored with at least min(t, this) tokens of context (None: half of data.seq_length; 0: plain cuts)

    def __post_init__(self):
        _one_of("select", "mode", self.mode, ("threshold", "top_fraction", "random"))
        if self.heldout_scorer == "proxy":
            raise ValueError("select.heldout_scorer=proxy: held-out positions are bucketed by the evaluated base's "
                             "entropy (pretrain, hf or a checkpoint directory), not the proxy's")
        if len(self.difficulty_thresholds) != 3:
            raise ValueError(f"select.difficulty_thresholds needs 3 values (easy, medium, hard), got "
                             f"{self.difficulty_thresholds}")
        if self.window_overlap is not None and self.window_overlap < 0:
            raise ValueError(f"select.window_overlap must be >= 0 (or null for half a window), got "
                             f"{self.window_overlap}")

    def bucket_source(self) -> str:
        """The model whose entropy buckets the held-out positions."""
        if self.heldout_scorer is not None:
            return self.heldout_scorer
        return "pretrain" if self.proxy == "proxy" else self.proxy

    def overlap(self, seq_length: int) -> int:
        """The scoring windows' overlap in tokens for windows of ``seq_length`` (data.seq_length)."""
        overlap = seq_length // 2 if self.window_overlap is None else self.window_overlap
        if overlap >= seq_length:
            raise ValueError(f"select.window_overlap={overlap} must be below data.seq_length={seq_length} (the "
                             f"scoring window)")
        return overlap


@dataclass
class SFTConfig:
    """Stage `sft`: supervised fine-tuning on demonstrations, the baseline beside `rl` (same start, same budget)."""

    source: str = "demo"  # demo (worked solutions of rl_task's training questions) | jsonl (records at `path`)
    path: str | None = None  # jsonl source: local .jsonl/.json/.parquet file(s) (glob ok) of prompt/response records
    prompt_field: str = "prompt"  # jsonl source: record field with the prompt text (encoded as is, no loss)
    response_field: str = "response"  # jsonl source: record field with the response text (trained on, EOS added)
    steps: int | None = None  # optimizer steps; None: rl.steps (each step trains rl.prompts_per_step x G sequences)
    micro_batch_size: int = 64  # sequences per forward/backward micro-batch per data-parallel rank
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # final learning rate (cosine)
    warmup_steps: int = 5  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    optimizer: str = "adam"  # adam (AdamW) | sgd (megatron's, momentum 0.9: an update proportional to the gradient,
    # so runs that differ only in summation order end within rounding of each other, which Adam's sign-like
    # first steps do not; the layout-equivalence tests use it)
    clip_grad: float = 1.0  # global gradient-norm clip
    checkpoint_every: int = 20  # steps between checkpoints
    init_from: str = "pretrain"  # checkpoint stage to start from (pretrain | rpt | cnt | hf | path); rl's start
    orders: int = 4  # demo source: distinct orders of operations rendered per problem (left to right first)

    def __post_init__(self):
        _one_of("sft", "source", self.source, ("demo", "jsonl"))
        _one_of("sft", "optimizer", self.optimizer, OPTIMIZERS)
        if self.orders < 1 or self.micro_batch_size < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError(f"sft.orders, sft.micro_batch_size and sft.steps must be >= 1, got {self.orders}, "
                             f"{self.micro_batch_size} and {self.steps}")


@dataclass
class QADatasetConfig:
    path: str | None = None  # hub dataset name (e.g. openai/gsm8k) or local .jsonl/.json/.parquet files (glob)
    name: str | None = None  # hub dataset config (e.g. main for gsm8k)
    train_split: str = "train"  # split (or datasets slice, e.g. train[:2000]) to train on
    test_split: str = "test"  # split of held-out questions
    question_field: str = "question"  # record field with the question
    answer_field: str = "answer"  # record field with the reference (GSM8K '#### 42', \boxed{} or the bare answer)


@dataclass
class RLTaskConfig:
    source: str = "reasoning_gym"  # reasoning_gym | dataset (a question/answer set, see `dataset`)
    task: str = "chain_sum"  # reasoning-gym task for downstream RL
    task_kwargs: dict[str, Any] = field(default_factory=lambda: {"min_terms": 4, "max_terms": 4,
                                                                  "min_digits": 1, "max_digits": 1})  # generator args
    train_size: int = 2000  # training questions
    test_size: int = 200  # held-out questions
    operators: list[str] | None = field(default_factory=lambda: ["+"])  # keep questions using only these (None: all)
    heldout_share: float | None = None  # split questions by expression (rpt.tasks.filters.problem_pool): test
    # questions only from this share of the problem space, training questions from the rest (the demo: its
    # data.heldout_fraction, so no training split of the corpus and no RL step holds a test question); None: off
    template: str = "{expression} = <think>"  # prompt; fields of the entry's metadata, plus {question}
    mix: dict[str, dict[str, Any]] = field(default_factory=dict)  # reasoning-gym mixture instead of `task`:
    # {name: {weight: w, <generator args>}}, e.g. +rl_task.mix.chain_sum={weight:2} +rl_task.mix.leg_counting={weight:1}
    dataset: QADatasetConfig = field(default_factory=QADatasetConfig)  # used when source=dataset
    train_on: list[str] = field(default_factory=lambda: ["pretrain", "rpt"])  # checkpoints fine-tuned by `rl`


@dataclass
class EvalConfig:
    max_positions: int | None = 300  # test positions evaluated (a seeded sample; null: every test position)
    samples: int = 4  # samples per position for the averaged accuracy (besides greedy)
    max_new_tokens: int = 48  # response cap when reasoning
    temperature: float = 0.8  # sampling temperature for the averaged accuracy
    downstream_samples: int | None = None  # samples per downstream question for avg@k, pass@k and diversity (None:
    # `samples`)
    next_token_samples: int | None = None  # samples per test position for reasoning_avg@k (None: `samples`; 0: only
    # the greedy rows)
    concentration_prompts: int = 64  # held-out prompts (× G) for where each RL stage's change lands; 0 = off


@dataclass
class AnalysisConfig:
    strategic_grams: list[str] = field(default_factory=lambda: [" = ", "</think>", "\\boxed{"])  # planning n-grams
    forking_threshold: float = 0.672  # entropy above which a token counts as forking (80th pct. in arXiv 2506.01939)
    overlap_rho: float = 0.2  # top-rho entropy tokens compared with the initial model
    overlap_every: int = 5  # steps between top-rho overlap measurements (0 = never; costs one extra forward)
    law_fit_fraction: float = 0.5  # entropy-law forecast: fit on this first share of steps, score the rest
    diversity_every: int = 1  # RL steps between group-diversity measurements (answers, n-grams, chrF; 0 = never)
    trajectory_threshold: float = 0.7  # chrF similarity at which responses count as one trajectory (UPGMA)
    mine_grams: bool = False  # RL stages: mine the strategic grams from the initial policy's successful rollouts
    mine_prompts: int = 64  # training prompts (x G samples) rolled out for mining


@dataclass
class ReportConfig:
    runs: list[str] = field(default_factory=list)  # non-empty: aggregate these runs (names under run.root, glob
    # patterns allowed, e.g. [seed*]) into mean ± std in <run.name>/report/ instead of reporting run.name itself
    samples_per_kind: int = 2  # "Samples" section: good (reward > 0) and bad (reward 0) rollouts shown per stage
    sample_chars: int = 400  # "Samples" section: characters kept per field (context, response, answer, reference)
    allow_mixed: bool = False  # aggregate runs whose settings differ (beyond the seed): the report names the keys;
    # without it such runs are refused (side-by-side algorithms, e.g. the remedies sweep, set it)

    def __post_init__(self):
        if self.samples_per_kind < 0 or self.sample_chars < 8:
            raise ValueError(f"report.samples_per_kind must be >= 0 and report.sample_chars >= 8, got "
                             f"{self.samples_per_kind} and {self.sample_chars}")


@dataclass
class HFConfig:
    path: str | None = None  # hf_import: directory with config.json, *.safetensors and tokenizer files
    source: str = "rpt"  # hf_export: which stage's latest checkpoint to export
    export_dir: str | None = None  # hf_export: output directory (default <run>/hf/<source>)
    architecture: str | None = None  # hf_export: Qwen2ForCausalLM | LlamaForCausalLM; None: the imported model's
    # architecture, else Qwen2 for a model with QKV bias and Llama without
    max_shard_size: str = "5GB"  # hf_export: largest safetensors shard (e.g. 500MB, 5GB, or bytes); larger models
    # are written as model-0000x-of-0000n.safetensors + model.safetensors.index.json

    def __post_init__(self):
        from rpt.model.hf import SUPPORTED, shard_bytes

        if self.architecture is not None:
            _one_of("hf", "architecture", self.architecture, tuple(SUPPORTED))
        shard_bytes(self.max_shard_size)  # a clear error for an unreadable size


@dataclass
class BenchConfig:
    parts: list[str] = field(default_factory=lambda: ["rollout", "rollout_ragged", "train", "scoring",
                                                      "scoring_processes", "rpt_step", "trl_grpo_step"])
    # what to time (trl_grpo_step needs trl)
    processes: list[int] = field(default_factory=lambda: [1, 2])  # scoring_processes: process counts compared
    batch_size: int = 16  # sequences per batch
    prompt_len: int = 64  # prompt tokens (rollout)
    new_tokens: int = 64  # generated tokens per sequence (rollout)
    train_seq_len: int = 256  # tokens per training / scoring sequence
    vocab_size: int = 320  # vocabulary when model.vocab_size is unset (random weights, random tokens)
    repeats: int = 3  # timed repetitions after one warm-up (median reported)
    peers: bool = True  # also time the HF transformers peer on the same weights (needs transformers)
    peak_flops: float = 989e12  # accelerator peak (dense bf16) for MFU; H100/H200 SXM: 989e12
    out: str | None = "bench.json"  # also write the JSON here (None: stdout only)
    # part `memory` (not in the default parts: minutes, and ~12 GB for its "before" at these shapes)
    memory_vocab_size: int = 151936  # vocabulary of the shallow model measured (Qwen2.5's)
    memory_context: int = 1024  # prompt tokens of the RPT step; tokens per entropy-scoring window
    memory_response: int = 2048  # response tokens per sequence of the RPT step compared before vs after
    memory_group_size: int = 2  # responses to the one prompt (a GRPO group, scored over one prompt copy)
    memory_lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])  # response lengths of
    # the peak-vs-length table ("before" measured up to memory_response)
    memory_scoring_windows: int = 4  # windows scored in one batch

    def __post_init__(self):
        sizes = [self.memory_vocab_size, self.memory_context, self.memory_response, self.memory_group_size,
                 self.memory_scoring_windows, *self.memory_lengths]
        if min(sizes) < 1 or not self.memory_lengths:
            raise ValueError(f"bench.memory_*: sizes must be >= 1 and memory_lengths non-empty, got {sizes}")


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "rpt"  # W&B project
    wandb_entity: str | None = None  # W&B entity (team); None = default
    progress: bool = True  # show progress bars
    log_every: int = 10  # steps between plain log lines of training metrics (when stderr is not a terminal)
    sample_every: int = 10  # RL steps between logged sample rollouts (rollouts/<stage>/, W&B table); 0 = never
    samples: int = 4  # rollouts per sample log (half the best, half the worst of rank 0's batch)
    peak_flops: float = 989e12  # accelerator peak (dense bf16) for the update's MFU on GPU; H100/H200 SXM: 989e12

    def __post_init__(self):
        _one_of("logging", "wandb_mode", self.wandb_mode, ("offline", "online", "disabled"))


@dataclass
class RootConfig:
    stage: str = "pipeline"  # which stage runs (set by the `rpt <stage>` command)
    stages: list[str] = field(default_factory=lambda: ["prep", "pretrain", "select", "rpt", "rl", "eval",
                                                       "report"])  # pipeline order
    force: bool = False  # start the stage (pipeline: every stage of `stages`) over: its outputs and those of the
    # stages that consume them move to <run>/superseded/<time>/ (rpt/force.py); never remembered by the run
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rpt: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    cnt: CntConfig = field(default_factory=CntConfig)
    rl: TrainLoopConfig = field(default_factory=lambda: TrainLoopConfig(steps=40, init_from="pretrain", lr=5e-5,
                                                                        min_lr=5e-5))
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl_task: RLTaskConfig = field(default_factory=RLTaskConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig)  # stage lm_eval (rpt/config_lm_eval.py)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        _one_of("rl_task", "source", self.rl_task.source, ("reasoning_gym", "dataset"))
        if self.reward.next_token_fn and self.rollout.format_reward:
            raise ValueError(f"reward.next_token_fn={self.reward.next_token_fn} is the whole reward, so "
                             f"rollout.format_reward={self.rollout.format_reward} would be ignored: set "
                             f"rollout.format_reward=0 (give the bonus in your function)")
        self.select.overlap(self.data.seq_length)  # the scoring windows' overlap fits in a window
        if self.algo.rlp.enabled and "rlp" in self.stages_to_run():
            raise ValueError("algo=rlp makes the `rpt` stage RLP already; stage `rlp` trains RLP beside an `rpt` "
                             "stage with the prefix reward: drop algo=rlp, or drop rlp from `stages`")
        for section in ("rpt", "rl"):
            getattr(self, section).check(section)
        self._check_vllm_shape()
        for section in ("pretrain", "proxy", "rpt", "rl", "sft"):
            if self.model.distributed_optimizer and getattr(self, section).optimizer != "adam":
                raise ValueError(f"{section}.optimizer={getattr(self, section).optimizer} cannot run with "
                                 f"model.distributed_optimizer=true (megatron shards Adam only): set one of them back")
        for section in self.rl_sections():
            loop = getattr(self, section)
            remedy = self.algo.needs_moving_policy()
            if remedy and loop.updates_per_rollout() == 1:
                raise ValueError(
                    f"{remedy} has no effect with one optimizer step per rollout in `{section}`: the importance "
                    f"ratio is exactly 1, so it would train exactly like plain GRPO. Take several optimizer steps "
                    f"per rollout: {section}.ppo_mini_batch_size=<a divisor of {section}.prompts_per_step="
                    f"{loop.prompts_per_step} below it> or {section}.ppo_epochs=2 or more.")

    def _check_vllm_shape(self) -> None:
        if self.rollout.engine != "vllm":
            return
        import torch

        head_dim = self.model.hidden_size // self.model.num_attention_heads
        on_cpu = self.run.device == "cpu" or not torch.cuda.is_available()
        if on_cpu and head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(f"rollout.engine=vllm on CPU: vLLM's CPU attention takes head sizes "
                             f"{list(VLLM_CPU_HEAD_DIMS)}, and model.hidden_size / model.num_attention_heads is "
                             f"{head_dim}: change model.num_attention_heads (and num_query_groups) or use "
                             f"rollout.engine=lean")

    def stages_to_run(self) -> list[str]:
        """The stages this invocation runs: ``stages`` under `pipeline`, else the one named."""
        return self.stages if self.stage == "pipeline" else [self.stage]

    def rl_sections(self) -> list[str]:
        """The RL loop sections (``rpt``, ``rl``) this invocation will train (stage `rlp` trains with ``rpt``'s)."""
        stages = self.stages_to_run()
        return [s for s in ("rpt", "rl") if s in stages or (s == "rpt" and "rlp" in stages)]


def load(cfg: DictConfig) -> RootConfig:
    """The composed Hydra config as typed dataclasses, validated (the one conversion, done by the CLI)."""
    return OmegaConf.to_object(cfg)


def register() -> None:
    """Register the schema so ``conf/config.yaml`` and the group files can extend it."""
    cs = ConfigStore.instance()
    cs.store(name="rpt_schema", node=RootConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="rollout", name="rollout_schema", node=RolloutConfig)
    cs.store(group="algo", name="algo_schema", node=AlgoConfig)
    cs.store(group="logging", name="logging_schema", node=LoggingConfig)
