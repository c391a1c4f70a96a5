"""The stage around the RL step, shared by the `rpt` and `rl` stages: build the trainable, the reference / initial
models and the feedback algorithms from the root config, mine strategic grams if asked, and hand ``rl_step`` to
the loop skeleton (resume, checkpoints, metrics). Only stages see the root config; the step itself
(``rpt.train.rl_loop``) takes the sections it needs through ``RLSetup``."""

from __future__ import annotations

import logging
from typing import Any

from rpt.analysis.planning import mine_strategic_grams
from rpt.checkpoint import latest_step_dir
from rpt.config import RootConfig, TrainLoopConfig
from rpt.distributed import gather_objects
from rpt.model.footprint import model_vocab
from rpt.model.loading import checkpoint_dir, load_eval_model
from rpt.reward.custom import CustomReward
from rpt.rollout.engine import SamplingParams, generate
from rpt.train.info_gain import InformationGain
from rpt.train.loop import LoopSpec, run_loop
from rpt.train.mismatch import MismatchWatch
from rpt.train.no_answer import NoAnswerWatch
from rpt.train.optim import build_trainable
from rpt.train.refinement import Refiner
from rpt.train.rl_loop import RLSetup, rl_step, step_seed
from rpt.train.self_distill import SelfDistiller

log = logging.getLogger(__name__)


def train(ctx, task, stage_name: str, init_source: str, loop_cfg: TrainLoopConfig, validator=None) -> dict:
    """Run (or resume) an RL stage from ``init_source``'s checkpoint; checkpoints go to ``checkpoints/<stage_name>``.
    ``validator`` (a ``rpt.eval.validation.Validator``) scores held-out items every ``loop_cfg.eval_every`` steps."""
    cfg, rt, rd = ctx.cfg, ctx.rt, ctx.rd
    check_layout(loop_cfg, rt.dp_size, stage_name)
    vocab = model_vocab(cfg.model, task.tokenizer.vocab_size)
    trainable = build_trainable(cfg.model, vocab, rt, loop_cfg, loop_cfg.steps)
    ref_model: Any | None = load_eval_model(cfg.model, rt, rd, init_source, vocab) if cfg.algo.kl_coef else None
    init_model = ref_model
    if init_model is None and cfg.analysis.overlap_every:
        init_model = load_eval_model(cfg.model, rt, rd, init_source, vocab)
    teacher_init = None  # SDPO's EMA / mixed teacher and RLP's EMA baseline start from the stage's initial weights
    if (cfg.algo.sdpo.enabled and cfg.algo.sdpo.teacher != "current") or cfg.algo.rlp.enabled:
        teacher_init = load_eval_model(cfg.model, rt, rd, init_source, vocab)
    run = make_setup(cfg, rt, trainable, task, loop_cfg, ref_model, init_model, validator, teacher_init)
    if cfg.analysis.mine_grams:  # from the initial policy, also when resuming
        initial = init_model or load_eval_model(cfg.model, rt, rd, init_source, vocab)
        run.grams = mine_grams(run, initial, cfg.analysis.mine_prompts)
        log.info("%s: %d strategic grams mined from the initial policy's successful rollouts: %s", stage_name,
                 len(run.grams), run.grams[:20])

    watch = NoAnswerWatch(stage_name, cfg.rollout, loop_cfg.steps)
    # RLP scores the true token after any thought, a user's reward reads what it likes: neither needs a box
    answer_needed = not cfg.algo.rlp.enabled and not isinstance(task.reward, CustomReward)
    mismatch = MismatchWatch(stage_name, cfg.rollout)

    def step_fn(step: int, state: dict) -> tuple[dict, dict]:
        metrics, cursor = rl_step(run, step, state["cursor"])
        if answer_needed:
            watch.observe(metrics["no_answer_share"])
        if metrics.get("token_mult_prob_error") is not None:
            mismatch.observe(step + 1, metrics["token_mult_prob_error"])
        return metrics, {"cursor": cursor}

    spec = LoopSpec(stage_name, loop_cfg.steps, loop_cfg.checkpoint_every, checkpoint_dir(rd, init_source),
                    postfix=("reward_mean", "entropy"), state={"cursor": 0}, keep_steps=tuple(loop_cfg.keep_steps))
    history = run_loop(ctx, spec, trainable, step_fn)
    tail = history[-max(1, len(history) // 4):] if history else []
    return {"steps": loop_cfg.steps, "checkpoint": str(latest_step_dir(rd.checkpoints(stage_name))),
            "reward_last_quarter": sum(m.get("reward_mean", 0.0) for m in tail) / max(1, len(tail)), **watch.summary(),
            **mismatch.summary()}


def mine_grams(run: RLSetup, model, prompts: int) -> list[str]:
    """Strategic grams mined (``rpt.analysis.planning.mine_strategic_grams``) from the successful rollouts of
    ``model`` (the stage's initial policy) on ``prompts`` training prompts spread over the ranks; a pure function
    of (weights, seed), so a resumed stage mines the same list. ``analysis.strategic_grams`` when none succeeded."""
    rt, G, task = run.rt, run.rollout.group_size, run.task
    items = task.items_for_step(0, max(prompts, rt.dp_size), run.seed + 1)[rt.dp_rank::rt.dp_size]
    drawn = generate(model, [task.prompt_ids(it) for it in items for _ in range(G)], run.sampling,
                     step_seed(run.seed, -1, rt.dp_rank), rt.device)
    texts = [task.tokenizer.decode(drawn.response_ids(i)) for i in range(len(drawn))]
    good = [t for i, t in enumerate(texts) if task.is_correct(task.reward(items[i // G], t))]
    solutions = [t for part in gather_objects(good) for t in part]
    return mine_strategic_grams(solutions) or list(run.analysis.strategic_grams)


def make_setup(cfg: RootConfig, rt, trainable, task, loop_cfg: TrainLoopConfig, ref_model=None,
               init_model=None, validator=None, teacher_init=None) -> RLSetup:
    """The ``RLSetup`` of a ``RootConfig`` (its rollout, algo, analysis and logging sections) for one RL loop;
    ``teacher_init``: the initial weights of SDPO's EMA / mixed teacher or RLP's EMA baseline (None: a copy of the
    trainable's)."""
    sampling, algo, G = SamplingParams.from_rollout(cfg.rollout, task.tokenizer), cfg.algo, cfg.rollout.group_size
    feedback = []
    if algo.critique.enabled:
        feedback.append(Refiner(algo.critique, task, sampling, G))
    if algo.sdpo.enabled:
        feedback.append(SelfDistiller(algo.sdpo, task, trainable, G, teacher_init, cfg.model, rt.dtype,
                                      algo.share_prompt))
    if algo.rlp.enabled:
        feedback.append(InformationGain(algo.rlp, task, trainable, G, teacher_init, cfg.model,
                                        loop_cfg.micro_batch_size))
    return RLSetup(trainable, task, cfg.rollout, algo, loop_cfg, cfg.analysis, sampling, rt, cfg.run.seed, ref_model,
                   init_model, cfg.logging, validator, feedback=tuple(feedback))


def check_layout(loop_cfg: TrainLoopConfig, dp_size: int, section: str) -> None:
    """Prompts must split evenly over the data-parallel ranks and the mini-batches."""
    if loop_cfg.prompts_per_step % dp_size:
        raise ValueError(f"{section}: prompts_per_step={loop_cfg.prompts_per_step} does not split over "
                         f"{dp_size} data-parallel ranks")
    mini = loop_cfg.mini_batch_prompts
    if (mini // dp_size) * dp_size != mini:
        raise ValueError(f"{section}: ppo_mini_batch_size={mini} does not split over {dp_size} data-parallel ranks")
