"""pyproject.toml and environment.yml list the same packages."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec, 1)[0].strip().lower()


def test_conda_environment_matches_pyproject():
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(s) for s in pp["dependencies"] + pp["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    assert wanted == conda, f"only in pyproject: {wanted - conda}; only in environment.yml: {conda - wanted}"


def test_design_card_packages_are_there():
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(s) for s in pp["dependencies"]}
    assert {"jupyterlab", "papermill", "ipywidgets", "libvirt-python", "matplotlib", "nbval"} <= names


def test_versions_agree():
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d): d.replace(" ", "") for d in env["dependencies"] if isinstance(d, str)}
    for spec in pp["dependencies"]:
        assert conda[_name(spec)] == spec.replace(" ", ""), spec
