"""TRL peer for `rpt bench`: one GRPOTrainer step on the same weights, batch shape and rollout length as our
RPT step, timed per optimizer step (an optional dependency: ``pip install rpt[bench]``).

TRL needs a text tokenizer and a text dataset. We give it a word-level tokenizer whose words are the token ids
(``<17>`` is id 17), so every prompt is exactly ``bench.prompt_len`` tokens, and force every completion to
``rollout.max_new_tokens`` tokens (``min_new_tokens``) as ours never stop early in the bench either. Like ours,
the step is: sample G completions per prompt, score them, one GRPO update (beta = 0, no reference model).
"""

from __future__ import annotations

import logging
import tempfile
import time

import torch

from rpt.bench.timing import Timing

log = logging.getLogger(__name__)


def _word_level_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"<{i}>": i for i in range(vocab)}
    core = Tokenizer(models.WordLevel(words, unk_token="<1>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.Sequence([])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<0>", eos_token="<2>", unk_token="<1>")


def _step_timer(between_steps=None):
    """A TrainerCallback recording the wall time (and start) of every optimizer step, then calling
    ``between_steps()`` after each step but the first (TRL's warm-up), outside the timed span."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.started, self._t0 = [], [], None

        def on_step_begin(self, *args, **kwargs):
            self._t0 = time.perf_counter()
            self.started.append(self._t0)

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self._t0)
            if between_steps is not None and len(self.times) > 1:
                between_steps()

    return StepTimer()


def bench_trl_grpo_step(hf_model, cfg, vocab: int, bc, between_steps=None) -> dict:
    """Median and spread of the seconds per TRL GRPOTrainer step (after one warm-up step), or an explanation if
    TRL is missing. ``between_steps()`` (optional) runs after each timed step, untimed: our paired RPT step."""
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        return {"trl_skipped": "trl not installed (pip install 'rpt[bench]')"}
    g = torch.Generator().manual_seed(0)
    prompts_per_step, group = cfg.rpt.prompts_per_step, cfg.rollout.group_size
    prompts = [" ".join(f"<{t}>" for t in torch.randint(5, vocab, (bc.prompt_len,), generator=g).tolist())
               for _ in range(prompts_per_step * (bc.repeats + 1))]
    timer = _step_timer(between_steps)
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
            logging_steps=10_000, max_steps=bc.repeats + 1, per_device_train_batch_size=prompts_per_step * group,
            num_generations=group, max_completion_length=cfg.rollout.max_new_tokens,
            generation_kwargs={"min_new_tokens": cfg.rollout.max_new_tokens},
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, beta=0.0, num_iterations=1,
            learning_rate=cfg.rpt.lr, max_grad_norm=cfg.rpt.clip_grad, epsilon=cfg.algo.clip_low,
            epsilon_high=cfg.algo.clip_high, shuffle_dataset=False, bf16=torch.cuda.is_available(),
            seed=cfg.run.seed)
        trainer = GRPOTrainer(model=hf_model, reward_funcs=lambda completions, **kw: [float(len(c) % 2)
                                                                                     for c in completions],
                              args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
                              processing_class=_word_level_tokenizer(vocab), callbacks=[timer])
        trainer.train()  # the Trainer prints its log dicts: `rpt bench` diverts stdout to stderr around the run
    timed_steps = slice(1, None) if len(timer.times) > 1 else slice(None)
    steps = Timing(tuple(timer.times[timed_steps]))
    return {"trl_grpo_step_s": steps.median, "trl_grpo_step_spread_s": steps.spread,
            "trl_grpo_step_times_s": list(steps.times), "trl_grpo_step_started_s": timer.started[timed_steps]}
