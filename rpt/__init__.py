"""rpt: Reinforcement Pre-Training on megatron-core. Importing the package imports megatron-core once, with its
fused kernels compiled on first use (``rpt.lazy_fusions``: 3 s less per process)."""

from rpt.lazy_fusions import import_megatron_core

import_megatron_core()
