"""rpt: Reinforcement Pre-Training on megatron-core. Importing the package hooks two of megatron-core's imports
that rpt does not need at import time: its fused kernels compile on first use (``rpt.lazy_fusions``: 3 s less per
process), and wandb runs on first use (``rpt.lazy_wandb``: 0.7 s less)."""

from rpt import lazy_fusions, lazy_wandb

lazy_fusions.install()
lazy_wandb.install()
