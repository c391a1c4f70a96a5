"""`rpt bench` part ``rpt_step``: one full GRPO step of our RL loop (``rl_step``: rollout, score, update) on
synthetic next-token tasks, timed whole and per phase; its peer is one TRL step (``rpt.bench.trl_peer``)."""

from __future__ import annotations

import statistics
import time

import torch

from rpt.tasks.base import Task


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


def bench_rpt_step(cfg, rt, vocab: int, bc) -> dict:
    from rpt.train.optim import build_trainable
    from rpt.train.rl_loop import make_setup, rl_step

    trainable = build_trainable(cfg.model, vocab, rt, cfg.rpt, 10_000)
    run = make_setup(cfg, rt, trainable, SyntheticNextToken(vocab, bc.prompt_len), cfg.rpt)
    _, cursor = rl_step(run, 0, 0)  # warm-up
    rows, totals = [], []
    for s in range(1, bc.repeats + 1):
        t0 = time.perf_counter()
        row, cursor = rl_step(run, s, cursor)
        totals.append(time.perf_counter() - t0)
        rows.append(row)
    keys = ["rollout_s", "score_s", "update_s", "tokens_per_s", "response_length"]
    out = {f"rpt_step_{k}": statistics.median(r[k] for r in rows) for k in keys}
    out["rpt_step_s"] = statistics.median(totals)
    return out
