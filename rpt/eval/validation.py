"""Validation during RL training: greedy accuracy on a fixed sample of held-out items, every ``eval_every`` steps.

For `rpt` the items are held-out high-entropy positions (accuracy overall and per nested difficulty bucket, as the
eval stage reports them); for `rl` they are held-out downstream questions. The sample is fixed for the whole stage
(a seeded choice), so successive values measure the policy, not the sample. Each data-parallel rank scores its
share and the counts are summed, so every rank returns the same numbers. Greedy decoding draws no random numbers
and ``generate`` restores the model's training mode, so a run with validation trains exactly like one without.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from rpt.distributed import dp_sum
from rpt.eval.accuracy import reasoning_first
from rpt.rollout.engine import SamplingParams

BUCKETS = ("easy", "medium", "hard")


class Validator:
    def __init__(self, task, size: int, sampling: SamplingParams, seed: int, rt, thresholds=None):
        pick = np.random.default_rng([seed, 17]).permutation(len(task))[:size]
        self.task, self.items = task, [task.items[i] for i in sorted(pick.tolist())]
        self.sampling = replace(sampling, temperature=0.0)
        self.seed, self.rt = seed, rt
        self.thresholds = list(thresholds) if thresholds is not None else None

    def __call__(self, model) -> dict:
        """``val/accuracy`` and ``val/n`` (and per bucket with thresholds) over the whole sample."""
        mine = self.items[self.rt.dp_rank::self.rt.dp_size]
        scores = reasoning_first(model, self.task, mine, 1, self.sampling, self.seed, self.rt.device) if mine else []
        groups = {"": [True] * len(mine)}
        if self.thresholds is not None:
            for name, thr in zip(BUCKETS, self.thresholds, strict=True):
                groups[f"_{name}"] = [it["entropy"] > thr for it in mine]
        sums = dp_sum(*[v for chosen in groups.values() for v in
                        (sum(s for s, c in zip(scores, chosen, strict=True) if c), float(sum(chosen)))], 0.0)
        out = {}
        for i, suffix in enumerate(groups):
            total, n = sums[2 * i], sums[2 * i + 1]
            out[f"val/accuracy{suffix}"] = total / n if n else None
            out[f"val/n{suffix}"] = int(n)
        return out
