"""Stage `rlp`: RLP (arXiv 2510.01265) beside RPT in one run, for the comparison at matched settings: the same
train positions, the same starting checkpoint (``rpt.init_from``), the same loop settings (``rpt.*``: steps,
prompts, G, learning rate) and rollout settings, with the algorithm the run configures (``algo.*``) switched to
RLP's reward: the information gain of the true next token against the no-think EMA baseline, group-relative
advantages without the std division (what ``algo=rlp`` sets; ``rpt.train.info_gain``). Its checkpoints go to
``checkpoints/rlp``; `eval` scores them beside `rpt`'s and `cnt`'s, and `rl` can start from them
(``rl_task.train_on``). ``experiment=rlp_compare`` runs the three side by side.

A run whose `rpt` stage already trains RLP (``algo=rlp``) needs no `rlp` stage: it would train the same thing twice,
and the config refuses it (``RootConfig``)."""

from __future__ import annotations

import copy
from dataclasses import replace

from rpt.stages.rpt import train_next_token


def rlp_config(cfg):
    """``cfg`` with its algorithm switched to RLP's reward and advantages (every other ``algo.*`` kept). The algo
    section is validated again; the root is not (it refuses ``algo=rlp`` beside stage `rlp`, which this is)."""
    switched = copy.copy(cfg)
    switched.algo = replace(cfg.algo, norm_adv_by_std=False, rlp=replace(cfg.algo.rlp, enabled=True))
    return switched


def run(ctx) -> dict:
    return train_next_token(replace(ctx, cfg=rlp_config(ctx.cfg)), "rlp")
