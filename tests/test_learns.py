"""The RL loop learns (verl's ``digit_completion`` check, prime-rl's reverse-text test): the real RL step — the
smoke megatron model, the lean rollout decoder, GRPO, the next-token task's prefix-matching reward on boxed
answers — trains a known-learnable next-token task from a reward below ``LOW`` to one above ``HIGH`` within
``STEPS`` steps; with the learning rate at 0 (the planted fault) the reward does not rise.

The task: digit completion. Each context counts up to 6 (``"2 3 4 5 6 "``, ``"0,1,2,3,4,5,6,"``, ...) and the
next token is ``7``. The policy starts from a format warm-up — ``WARMUP`` steps of the `sft` stage's response loss
on ``</think> \\boxed{d}``, each digit ``d`` equally often — so it writes a parseable answer and boxes any digit:
a reward near 0.1, which only reinforcing the right digit can raise. The next token is the
same for every context: the smoke model (32 wide) needs well over a hundred RL steps before its answer depends on
its context (measured: copying one of two digits sat at the context-free reward 0.5 for 50 to over 150 steps by
seed), too slow for the suite. A reward credited to another row than the response it scores still stops the
learning, since each row's reward depends on its own sampled answer.

Measured on this 2-core CPU, mean reward of the first / last ``K`` = 5 of ``STEPS`` = 40 steps (torch threads 1 and
2; the curves are bit-identical run to run on one machine and thread count, and part within rounding across thread
counts):

    seed    threads 1        threads 2
    0       0.125 / 0.931    0.125 / 0.909
    1       0.050 / 0.897    0.050 / 0.887
    2       0.081 / 0.894    0.081 / 0.947
    3       0.131 / 0.906    0.131 / 0.950
    4       0.106 / 0.966    0.106 / 0.963
    lr 0    0.078 / 0.056    0.078 / 0.056   (seed 0: the weights never move)

so ``LOW`` = 0.3 clears the highest start by 0.17 and ``HIGH`` = 0.7 sits 0.19 below the lowest finish. The test
runs seed 0 on one torch thread (the warm-up once, shared by both cases): about 16 s on this machine.
"""

from __future__ import annotations

import pytest
import torch

from rpt import config as schema
from rpt.model import cpu_compat
from rpt.model.footprint import model_vocab
from rpt.model.weight_writes import note_weights_written
from rpt.stages.rl_training import make_setup
from rpt.stages.sft import pack, response_loss_sum
from rpt.tasks.demonstrations import Demonstration
from rpt.tasks.next_token import NextTokenTask
from rpt.train.optim import build_trainable
from rpt.train.rl_loop import rl_step
from tests.helpers import compose_config

pytestmark = pytest.mark.e2e  # a learning run (~15 s): `make test` runs it, `make test-fast` leaves it out

WARMUP = 40  # format warm-up steps (sft), 60 demonstrations each
STEPS = 40  # RL steps
K = 5  # steps averaged at each end of the curve
LOW, HIGH = 0.3, 0.7  # the first K steps' mean reward must be below LOW, the last K steps' above HIGH
LR = 0.002  # RL learning rate (constant); Adam-normalised, large for the tiny model: the signal is one token


def digit_completion_items(tokenizer) -> list[dict]:
    """Next-token items (``NextTokenTask``'s hand-made form): runs counting up to 6, space- or comma-separated,
    whose continuation is ``7 8 9``."""
    items = []
    for sep in (" ", ","):
        for start in range(6):
            context = sep.join(str(d) for d in range(start, 7)) + sep
            items.append({"context": tokenizer.encode(context), "target": tokenizer.encode(sep.join("789")),
                          "entropy": 0.0})
    return items


def config(seed: int = 0, lr: float = LR):
    return schema.load(compose_config(
        "experiment=smoke", "stage=rpt", f"run.seed={seed}", f"rpt.steps={STEPS}", f"rpt.lr={lr}",
        f"rpt.min_lr={lr}", "rpt.warmup_steps=0", "rpt.prompts_per_step=8", "rollout.group_size=8",
        f"sft.steps={WARMUP}", "sft.lr=0.01", "sft.min_lr=0.001", "sft.warmup_steps=0"))


def format_warm_up(cfg, runtime, tokenizer, task) -> dict:
    """A fresh smoke model trained ``WARMUP`` steps on ``</think> \\boxed{d}`` (each digit ``d`` 6 times a step) after
    random prompts of the task, through the `sft` stage's loss; its weights."""
    cpu_compat.seed_all(cfg.run.seed)
    trainable = build_trainable(cfg.model, model_vocab(cfg.model, tokenizer.vocab_size), runtime, cfg.sft, WARMUP)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    for _ in range(WARMUP):
        picks = torch.randint(0, len(task), (60,), generator=gen).tolist()  # each digit boxed 6 times a step
        demos = [Demonstration(tuple(task.prompt_ids(task.items[i])),
                               tuple(tokenizer.encode(f"</think> \\boxed{{{n % 10}}}") + [tokenizer.eos_id]))
                 for n, i in enumerate(picks)]
        tokens, mask = pack(demos, tokenizer.pad_id)
        trainable.zero_grad()
        (response_loss_sum(trainable.model, tokens, mask) / mask.sum()).backward()
        trainable.step()
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in trainable.model.module.state_dict().items()}


def reward_curve(cfg, runtime, tokenizer, task, start: dict) -> list[float]:
    """Each RL step's mean reward over ``cfg.rpt.steps`` steps from the weights ``start``."""
    cpu_compat.seed_all(cfg.run.seed)
    trainable = build_trainable(cfg.model, model_vocab(cfg.model, tokenizer.vocab_size), runtime, cfg.rpt,
                                cfg.rpt.steps)
    trainable.model.module.load_state_dict(start)
    note_weights_written(trainable.model)
    run = make_setup(cfg, runtime, trainable, task, cfg.rpt)
    rewards, cursor = [], 0
    for step in range(cfg.rpt.steps):
        metrics, cursor = rl_step(run, step, cursor)
        rewards.append(metrics["reward_mean"])
    return rewards


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread while this module runs: the measured curves are the one-thread ones whatever the machine's
    cores (``make test`` gives each worker one anyway), and a model this small only loses time to a second thread
    (several times over on a busy machine: 114 s instead of 16 s once)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def warmed(runtime, tokenizer):
    cfg = config()
    task = NextTokenTask.from_rollout(digit_completion_items(tokenizer), tokenizer, cfg.rollout)
    return task, format_warm_up(cfg, runtime, tokenizer, task)


def _mean(values) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("lr", [LR, 0.0], ids=["learns", "lr0-does-not"])
def test_reward_rises_on_digit_completion(lr, warmed, runtime, tokenizer):
    task, start = warmed
    rewards = reward_curve(config(lr=lr), runtime, tokenizer, task, start)
    first, last = _mean(rewards[:K]), _mean(rewards[-K:])
    shown = f"mean reward {first:.3f} over the first {K} steps, {last:.3f} over the last; each step's: " + ", ".join(
        f"{r:.2f}" for r in rewards)
    assert first < LOW, shown  # the warmed-up policy boxes a random digit
    if lr:
        assert last > HIGH, shown
    else:
        assert last < LOW, shown
