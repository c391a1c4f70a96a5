"""`rpt bench` part ``train``: forward+backward+optimizer-step tokens/s of our trainer (and MFU on GPU) against a
plain HF forward/backward with torch AdamW on the same weights and tokens, the two timed in alternation."""

from __future__ import annotations

import torch

from rpt.bench.timing import ratio_spread, timed_alternating
from rpt.model.forward import lm_loss


def bench_train(model_cfg, vocab, rt, hf, bc, n_params: int) -> dict:
    from rpt.config import TrainLoopConfig
    from rpt.train.optim import build_trainable

    tc = TrainLoopConfig(lr=1e-4, min_lr=1e-4, weight_decay=0.0, clip_grad=1.0, warmup_steps=0)
    trainable = build_trainable(model_cfg, vocab, rt, tc, 10_000)
    tokens = torch.randint(5, vocab, (bc.batch_size, bc.train_seq_len + 1)).to(rt.device)

    def ours():
        trainable.zero_grad()
        lm_loss(trainable.model, tokens).backward()
        trainable.step()

    fns = {"ours": ours}
    if hf is not None:
        hf.train()
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.0)

        def peer():
            opt.zero_grad(set_to_none=True)
            hf(tokens[:, :-1], labels=tokens[:, :-1]).loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            opt.step()

        fns["hf"] = peer
    timings = timed_alternating(fns, bc.repeats)
    ours_t = timings["ours"]
    ours_s, n_tok = ours_t.median, bc.batch_size * bc.train_seq_len
    out = {"train_tok_s": n_tok / ours_s, "spread_s": {"train_step": ours_t.spread}}
    if rt.device.type == "cuda":
        out["mfu"] = 6 * n_params * n_tok / ours_s / bc.peak_flops
    if hf is not None:
        peer_t = timings["hf"]
        peer_s = peer_t.median
        out["hf_train_tok_s"] = n_tok / peer_s
        out["train_speedup_vs_hf"] = out["train_tok_s"] / out["hf_train_tok_s"]
        out["train_speedup_vs_hf_spread"] = ratio_spread(peer_t, ours_t)
        out["spread_s"]["hf_train_step"] = peer_t.spread
        if rt.device.type == "cuda":
            out["hf_mfu"] = 6 * n_params * n_tok / peer_s / bc.peak_flops
    return out
