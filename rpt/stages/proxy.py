"""Stage `proxy`: a separate, smaller selection proxy, pretrained like the base on the pretraining split.

The RPT paper chooses its training positions with a small proxy (R1-Distill-Qwen-1.5B) and trains and evaluates a
larger model (R1-Distill-Qwen-14B); when one model both chooses the positions and is the baseline on them, "hard"
means "where that model is unsure", which caps its direct accuracy there by construction. With
``select.proxy=proxy`` the positions RPT trains on are this model's high-entropy positions, while the held-out
positions stay bucketed by the evaluated base's entropy (``select.heldout_scorer``). Its shape is ``model``'s with
the ``proxy.*`` shape fields changed (``ProxyConfig.model_config``).
"""

from __future__ import annotations

from rpt.stages.pretrain import train_language_model


def run(ctx) -> dict:
    cfg = ctx.cfg
    return train_language_model(ctx, cfg.proxy.model_config(cfg.model), cfg.proxy, "proxy")
