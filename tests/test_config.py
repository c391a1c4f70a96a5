"""Hydra composition: overrides reach every field; typos and bad types fail naming the key."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from rpt import config as schema
from rpt.cli import CONF_DIR

schema.register()


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_defaults_and_overrides():
    cfg = _compose(["model.hidden_size=64", "algo=forking", "rollout.group_size=4", "experiment=smoke"])
    assert cfg.model.hidden_size == 64
    assert cfg.algo.forking_rho == 0.2
    assert cfg.rollout.group_size == 4
    assert cfg.pretrain.steps == 6  # from experiment=smoke


@pytest.mark.parametrize("override,name", [("pretrain.stpes=3", "stpes"), ("modle.hidden_size=3", "modle"),
                                           ("algo.clip_hihg=0.3", "clip_hihg")])
def test_misspelled_key_names_it(override, name):
    with pytest.raises(ConfigCompositionException) as err:
        _compose([override])
    assert name in str(err.value) + str(err.value.__cause__)


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["model.hidden_size=big"])
    assert "hidden_size" in str(err.value) + str(err.value.__cause__)


def test_every_group_entry_composes():
    import os

    for group in ("model", "algo", "rollout", "logging", "experiment", "data"):
        for name in os.listdir(os.path.join(CONF_DIR, group)):
            cfg = _compose([f"{group}={name[:-5]}"])
            assert cfg.model.hidden_size > 0 and cfg.rollout.group_size > 0


def test_pipeline_parallel_is_refused_with_a_clear_message():
    from types import SimpleNamespace

    from rpt import runtime

    with pytest.raises(ValueError, match="pipeline parallelism is not supported"):
        runtime.init(SimpleNamespace(device="cpu", dtype="auto", seed=0, tensor_parallel=1, pipeline_parallel=2))
