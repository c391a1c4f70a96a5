"""The Hydra config tree of `rpt`, installed as the package ``rpt_conf`` (see pyproject.toml) so that the YAML files
ship inside the wheel and ``rpt.cli`` finds them through ``importlib.resources`` in any kind of install."""
