"""Shared fixtures: a real sentencepiece tokenizer trained on the demo corpus, a megatron runtime (world of 1,
gloo), and a tiny real GPTModel."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in one pytest-xdist worker per core: each worker (and every process it starts,
    # which inherits the environment) gets its share of the cores, since OpenMP threads that outnumber the cores
    # spin against each other and slow every process down many times over. Set before torch is imported.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture (a smoke run built once and copied) go to the same xdist worker
    (``--dist loadgroup``), so the fixture is built once per test run, not once per worker."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name in info.names_closure if info else ():
            defs = info.name2fixturedefs.get(name)
            if defs and defs[-1].scope == "module":
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}::{name}"))
                break


def demo_data_cfg(**kw):
    from rpt.config import DataConfig

    cfg = DataConfig()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    """A sentencepiece model trained on demo documents plus a few unusual strings."""
    from data_prep.demo_corpus import generate_documents
    from data_prep.tokenizer_train import train_tokenizer

    docs = generate_documents(demo_data_cfg(), 300, 0.5, seed=0)
    extra = ["unicode é 数学 ∑x² — naïve café\n", "  two  spaces\tand\ttabs\n\n", "$\\frac{a}{b} = \\sqrt{x^2}$"]
    return train_tokenizer(docs + extra, tmp_path_factory.mktemp("tok"), 320, "bpe")


@pytest.fixture(scope="session")
def tokenizer(tokenizer_file):
    from rpt.tokenizer import Tokenizer

    return Tokenizer(tokenizer_file)


@pytest.fixture(scope="session")
def runtime():
    from rpt import runtime as rt_mod

    rt = rt_mod.init(SimpleNamespace(device="cpu", dtype="auto", seed=0, tensor_parallel=1, pipeline_parallel=1))
    yield rt
    rt_mod.shutdown()


@pytest.fixture()
def tiny_model(runtime, tokenizer):
    from rpt.config import ModelConfig
    from rpt.model import cpu_compat
    from rpt.model.build import build_model

    cpu_compat.seed_all(0)
    cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2)
    model = build_model(cfg, tokenizer.vocab_size)
    model.eval()
    return model
