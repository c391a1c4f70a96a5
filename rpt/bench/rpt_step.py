"""`rpt bench` part ``rpt_step``: full GRPO steps of our RL loop (``rl_step``) on synthetic next-token tasks, timed
whole and per phase by the step's own phase timer; its peer is one TRL step (``rpt.bench.trl_peer``), and with
both parts the two alternate step by step (``rpt.bench.run``)."""

from __future__ import annotations

import statistics
import time

import torch

from rpt.bench.timing import Timing
from rpt.tasks.base import Task
from rpt.train.optim import build_trainable


class ByteTok:
    """A tokenizer stand-in: token i decodes to one letter, so rewards and responses are cheap to compute."""

    eos_id, pad_id = -1, 0

    def decode(self, ids):
        return "".join(chr(65 + i % 26) for i in ids)

    def token_bytes(self, i):
        return bytes([65 + i % 26])


class SyntheticNextToken(Task):
    """Random contexts; reward = the response's first token equals a random target (verifiable, cheap)."""

    def __init__(self, vocab: int, prompt_len: int, size: int = 256):
        g = torch.Generator().manual_seed(0)
        items = [(torch.randint(5, vocab, (prompt_len,), generator=g).tolist(),
                  int(torch.randint(5, vocab, (1,), generator=g))) for _ in range(size)]
        super().__init__(items, tokenizer=ByteTok())

    def prompt_ids(self, item):
        return item[0]

    def reward(self, item, response_text):
        return float(response_text[:1] == chr(65 + item[1] % 26))


class RptStepper:
    """Our RL loop one timed step at a time (``rl_step`` after a warm-up step), so the bench can run the steps back
    to back or one after each of TRL's steps (``rpt.bench.run``: paired, so a machine that slows down for a while
    slows both sides of the ratio alike)."""

    def __init__(self, cfg, rt, vocab: int, bc):
        from rpt.stages.rl_training import make_setup
        from rpt.train.rl_loop import rl_step

        self._rl_step = rl_step
        trainable = build_trainable(cfg.model, vocab, rt, cfg.rpt, 10_000)
        self.run = make_setup(cfg, rt, trainable, SyntheticNextToken(vocab, bc.prompt_len), cfg.rpt)
        _, self.cursor = rl_step(self.run, 0, 0)  # warm-up
        self.rows: list[dict] = []
        self.started: list[float] = []  # perf_counter() at the start of each timed step

    def step(self) -> None:
        self.started.append(time.perf_counter())
        row, self.cursor = self._rl_step(self.run, len(self.rows) + 1, self.cursor)
        self.rows.append(row)

    def figures(self) -> dict:
        """Median and spread of the whole step, the median of each phase that ran (``time/<phase>_s`` of
        ``rl_step``), and the share of the step the phases account for."""
        rows = self.rows
        step = Timing(tuple(r["time/step_s"] for r in rows))
        phases = {k[len("time/"):-len("_s")]: statistics.median(r[k] for r in rows) for k in rows[0]
                  if k.startswith("time/") and k not in ("time/step_s", "time/other_s")}
        return {"rpt_step_s": step.median, "rpt_step_spread_s": step.spread, "rpt_step_times_s": list(step.times),
                "rpt_step_started_s": list(self.started),
                "rpt_step_phases_s": {name: t for name, t in phases.items() if t > 0},
                "rpt_step_accounted_share": statistics.median(1 - r["time/other_s"] / r["time/step_s"] for r in rows),
                "rpt_step_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                "rpt_step_response_length": statistics.median(r["response_length"] for r in rows)}


def bench_rpt_step(cfg, rt, vocab: int, bc) -> dict:
    """``bench.repeats`` steps back to back (the part without its TRL peer)."""
    stepper = RptStepper(cfg, rt, vocab, bc)
    for _ in range(bc.repeats):
        stepper.step()
    return stepper.figures()
