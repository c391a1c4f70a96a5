"""A model is checked before it is built (``rpt.model.footprint``): the parameter count is the built model's, a model
that cannot fit the device's memory is refused with the estimate and the ways to fit, and a model vocabulary
smaller than the tokenizer's is refused (500× larger: a warning)."""

from __future__ import annotations

import logging

import pytest

from rpt.config import ModelConfig
from rpt.errors import Refusal
from rpt.model import footprint


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(**kw)


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": False, "tie_embeddings": False, "num_query_groups": 4}])
def test_the_count_is_the_built_models(kw, runtime):
    from rpt.model.build import build_model

    cfg = _cfg(**{"num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 4,
                  "num_query_groups": 2, **kw})
    model = build_model(cfg, 300, runtime.dtype)
    assert footprint.parameter_count(cfg, 300) == sum(p.numel() for p in model.parameters())


def test_a_7b_model_on_a_24_gib_cpu_is_refused_with_the_ways_to_fit(runtime, monkeypatch):
    import yaml

    from tests.test_readme import ROOT

    shape = yaml.safe_load((ROOT / "conf" / "model" / "qwen2_5_7b.yaml").read_text())
    cfg = _cfg(**{k: v for k, v in shape.items() if k in ModelConfig.__dataclass_fields__})
    monkeypatch.setattr(footprint, "device_bytes", lambda device: 24 * 2**30)
    with pytest.raises(Refusal) as err:
        footprint.check_fits(cfg, 152064, runtime, training=True)
    message = str(err.value)
    assert "7.6" in message and "GiB per rank" in message and "the cpu has 24.0 GiB" in message
    assert "run.tensor_parallel=" in message and "model.distributed_optimizer=true" in message
    with pytest.raises(Refusal, match="for weights \\("):  # even without training state (eval, import)
        footprint.check_fits(cfg, 152064, runtime, training=False)
    footprint.check_fits(_cfg(), 320, runtime, training=True)  # the tiny model fits


def test_the_model_vocabulary_against_the_tokenizer(caplog):
    assert footprint.model_vocab(_cfg(), 294) == 294
    assert footprint.model_vocab(_cfg(vocab_size=512), 294) == 512
    with pytest.raises(Refusal, match="model.vocab_size=200 is smaller than the tokenizer's 294 ids"):
        footprint.model_vocab(_cfg(vocab_size=200), 294)
    with caplog.at_level(logging.WARNING):
        assert footprint.model_vocab(_cfg(vocab_size=152064), 294) == 152064
    assert "517× the tokenizer's 294 ids" in caplog.text
