"""rpt: Reinforcement Pre-Training on megatron-core. Importing the package hooks megatron-core's import so its
fused kernels compile on first use (``rpt.lazy_fusions``: 3 s less per process)."""

from rpt.lazy_fusions import install

install()
