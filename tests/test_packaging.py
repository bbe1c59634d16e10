"""pyproject.toml and environment.yml list the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from the PyPI ones.
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_name(r) for r in requirements}


def _environment_names() -> set[str]:
    names = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        match = re.match(r"^\s+- (?!-e )([A-Za-z0-9_.-]+)", line)
        if match and not line.strip().endswith(":"):
            name = _name(match.group(1))
            names.add(CONDA_TO_PYPI.get(name, name))
    return names - NOT_PACKAGES


def test_environment_yml_matches_pyproject() -> None:
    assert _environment_names() == _pyproject_names()


# Imports every module of the package (what a dask worker or a user's notebook does) after the
# third-party modules those imports load, and prints whether warning filters or any logger's
# filters, handlers or level changed: the package may only install them for a run's duration.
_IMPORT_STATE = """
import importlib, json, logging, pkgutil, sys, warnings
def modules():
    import aef_pipeline
    found = pkgutil.walk_packages(aef_pipeline.__path__, "aef_pipeline.")
    return [m.name for m in found if not m.name.endswith("__main__")]  # that one runs the CLI
def state():
    loggers = {name: (tuple(map(repr, lg.filters)), tuple(map(repr, lg.handlers)), lg.level)
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return repr(warnings.filters), loggers
if sys.argv[1] == "third-party":
    for name in modules():
        importlib.import_module(name)
    print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} - {"aef_pipeline", "__main__"})))
else:
    for name in json.loads(sys.argv[2]):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    filters, loggers = state()
    for name in modules():
        importlib.import_module(name)
    after_filters, after_loggers = state()
    changed = [n for n in after_loggers if after_loggers[n] != loggers.get(n, ((), (), 0))]
    print(json.dumps({"filters_changed": after_filters != filters, "loggers_changed": changed}))
"""


def test_importing_the_package_installs_no_filters_and_touches_no_logger() -> None:
    import json
    import subprocess
    import sys

    def child(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", _IMPORT_STATE, *args], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    third_party = child("third-party")
    assert "torch" in json.loads(third_party)
    assert json.loads(child("ours", third_party)) == {"filters_changed": False, "loggers_changed": []}
