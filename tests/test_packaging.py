"""pyproject.toml lists the packages by hand (the config tree `conf/` installs under another name, `rpt_conf`, which
discovery cannot do): every code package and every config group must be on that list, or a wheel install would
silently lack it while the editable install keeps working."""

import os
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package_and_config_group():
    st = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert st["package-dir"] == {"rpt_conf": "conf"}
    code = set(find_packages(str(ROOT), include=["rpt", "rpt.*", "data_prep", "data_prep.*"]))
    conf = ROOT / "conf"
    groups = {".".join(["rpt_conf", *Path(d).relative_to(conf).parts]) for d, _, _ in os.walk(conf)
              if "__pycache__" not in d}
    assert set(st["packages"]) == code | groups
    assert (ROOT / "conf" / "__init__.py").exists() and "*.yaml" in st["package-data"]["*"]
