"""constraints.txt (scripts/lock.py) and pyproject.toml agree: every dependency is pinned, at a version its
specifier admits, torch without a local build label; and the environment the tests run in is the lock's."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from support.paths import REPO

ROOT = REPO
sys.path.insert(0, str(ROOT / "scripts"))
from lock import pinned_lines  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def lock_pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, v = line.partition("==")
            assert v, f"constraints.txt: {line!r} -> NAME==VERSION"
            pins[canonicalize_name(name)] = Version(v)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_pinned_at_a_version_pyproject_admits():
    pins = lock_pins()
    problems = []
    for req in project_requirements():
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name}: not in constraints.txt (run scripts/lock.py)")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req.name}: constraints.txt pins {pin}, pyproject.toml wants {req.specifier}")
    assert not problems, "\n".join(problems)
    assert "ranktune" not in pins  # the project is installed from the tree, never pinned
    assert not pins[canonicalize_name("torch")].local  # one line for CPU and CUDA builds of the version


def test_the_tested_environment_is_the_lock():
    """The venv the tests run in has the pinned version of every project dependency (public part: a CPU
    torch 2.13.0+cpu is the pin torch==2.13.0)."""
    pins = lock_pins()
    for req in project_requirements():
        try:
            installed = Version(version(req.name))
        except PackageNotFoundError:
            continue  # an optional extra not installed here
        assert Version(installed.public) == pins[canonicalize_name(req.name)], req.name


def test_lock_lines_drop_the_project_and_local_labels():
    freeze = "torch==2.13.0+cpu\n-e /work/main\nranktune @ file:///x\nRay==2.60.0\n# comment\n"
    assert pinned_lines(freeze) == ["Ray==2.60.0", "torch==2.13.0"]
