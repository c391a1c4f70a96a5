"""`rpt bench`: throughput of every phase, each against a peer measured in the same process, as JSON.

- rollout (``rollout.py``): prefill and decode tokens/s of our KV-cached sampler (and of megatron-core's own
  inference path), against HF ``transformers`` ``generate`` on the same architecture with the same weights
  (exported through ``rpt.model.hf``, ``hf_peer.py``); ``rollout_ragged``: whole ``generate`` calls on prompts of
  different lengths (RPT's contexts);
- train (``train.py``): forward+backward+step tokens/s (and MFU on GPU), against a plain HF forward/backward +
  torch AdamW;
- scoring (``scoring.py``): top-k entropy scoring tokens/s against a plain forward over the same tokens, and
  (``scoring_processes``, ``scaling.py``) the same scoring run by 1 and by 2 data-parallel processes;
- memory (``memory.py``, not in the default parts): peak memory of an RPT step and of entropy scoring at a 150k
  vocabulary, with the output layer in chunks against all logits at once, each in a fresh process, and the
  step's peak against response length;
- select memory (``select_memory.py``, its own command: ``python -m rpt.bench.select_memory``): peak memory of the
  `select` stage in a fresh process per corpus size (the demo corpus × 1, × 10, ...), optionally from an older
  checkout for a before/after;
- rpt step (``rpt_step.py``): one full GRPO step on synthetic next-token tasks, broken down by phase, against one
  TRL ``GRPOTrainer`` step with the same weights, batch and rollout length (``trl_peer.py``; needs ``trl``).

``run.py`` runs the parts named by ``bench.parts`` and assembles the JSON; ``rpt.cli`` prints it on stdout.
Shapes come from the ``bench`` config group fields and the model from ``model=...``, so any Hydra override
works. Times are medians over ``bench.repeats`` after a warm-up (``timing.py``); numbers are printed, never
asserted.
"""
