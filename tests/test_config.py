"""Hydra composition: overrides reach every field; typos and bad types fail naming the key."""

import pytest
from hydra.errors import ConfigCompositionException

from rpt import config as schema
from rpt.cli import CONF_DIR
from tests.helpers import compose_config

schema.register()


def _compose(overrides):
    return compose_config(*overrides)


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


@pytest.mark.parametrize("override,field", [("rollout.engine=fast", "rollout.engine"),
                                            ("algo.policy_loss=ppo2", "algo.policy_loss"),
                                            ("algo.loss_agg=mean", "algo.loss_agg"),
                                            ("select.mode=best", "select.mode"), ("run.device=tpu", "run.device"),
                                            ("rollout.template=v9", "rollout.template"),
                                            ("rpt.ppo_mini_batch_size=5", "rpt.ppo_mini_batch_size")])
def test_enum_fields_are_checked_when_the_config_is_loaded(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        schema.load(_compose([override]))


SWEEP = ["grpo", "clip_higher", "forking", "kl_cov", "clip_cov", "gppo", "gspo", "hicra"]


@pytest.mark.parametrize("algo", SWEEP)
def test_the_remedies_recipe_lets_every_variant_act(algo):
    """The README's sweep preset: several optimizer steps per rollout in both RL stages, so no variant is
    refused (and none trains exactly like GRPO)."""
    cfg = schema.load(_compose(["experiment=remedies", f"algo={algo}", "run.name=x"]))
    assert cfg.rpt.updates_per_rollout() == 4 and cfg.rl.updates_per_rollout() == 4


def test_the_remedies_recipe_names_each_run_after_its_algo(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "rpt.cli", "rpt", "experiment=remedies", "algo=kl_cov", "--cfg", "job",
                           "--resolve"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "name: remedies_kl_cov" in proc.stdout, proc.stderr[-2000:]
