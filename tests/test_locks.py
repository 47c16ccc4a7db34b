"""The lock files: what `make test`, `make demo`, the image and `make bench` install.

They must agree with the requirements they were resolved from, with each other, and with the
venv the suite runs in, so that a fresh machine gets exactly what CI tested.
"""

from __future__ import annotations

import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.locks import canonical, pins

ROOT = Path(__file__).parents[1]
TEST_LOCK = ROOT / "requirements" / "test.lock"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
# The runtime lock plus the otel extra, for an image that exports traces.
RUNTIME_OTEL_LOCK = ROOT / "requirements" / "runtime-otel.lock"
BENCH_LOCK = ROOT / "bench" / "requirements.lock"


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _requirements(*extras: str) -> list[Requirement]:
    project = _project()
    dependencies = project["dependencies"]
    optional = project["optional-dependencies"]
    assert isinstance(dependencies, list)
    assert isinstance(optional, dict)
    listed = [*dependencies, *(line for extra in extras for line in optional[extra])]
    return [Requirement(line) for line in listed]


def _build_requirements() -> list[Requirement]:
    lines = (ROOT / "requirements" / "build.in").read_text().splitlines()
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize(
    ("lock", "extras"),
    [(TEST_LOCK, ("test", "fast")), (RUNTIME_LOCK, ("fast",)),
     (RUNTIME_OTEL_LOCK, ("fast", "otel"))],
    ids=["test", "runtime", "runtime-otel"],
)
def test_a_lock_pins_every_requirement_within_its_bounds(lock: Path, extras: tuple[str, ...]
                                                         ) -> None:
    locked = pins(lock)
    for requirement in [*_requirements(*extras), *_build_requirements()]:
        name = canonical(requirement.name)
        assert name in locked, f"{lock.name} does not pin {name}: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock.name} pins {name}=={locked[name]}, outside {requirement}: run `make lock`")


def test_the_image_gets_the_versions_the_suite_tested() -> None:
    """The runtime lock is a subset of the test lock, version for version."""
    tested = pins(TEST_LOCK)
    for lock in (RUNTIME_LOCK, RUNTIME_OTEL_LOCK):
        for name, version in pins(lock).items():
            assert tested.get(name) == version, (
                f"{name}: {lock.name} has {version}, test.lock {tested.get(name)}")


def test_every_pin_carries_its_hashes() -> None:
    """pip installs the locks with --require-hashes: a pin without a hash would fail there."""
    for lock in (TEST_LOCK, RUNTIME_LOCK, RUNTIME_OTEL_LOCK, BENCH_LOCK):
        lines = lock.read_text().splitlines()
        pinned = [i for i, line in enumerate(lines) if line and line[0].isalnum()]
        assert len(pinned) >= 10, lock
        for i in pinned:
            assert "==" in lines[i], (lock.name, lines[i])
            assert lines[i + 1].strip().startswith("--hash=sha256:"), (lock.name, lines[i])


def test_the_bench_lock_pins_the_bench_requirements() -> None:
    locked = pins(BENCH_LOCK)
    lines = (ROOT / "bench" / "requirements.txt").read_text().splitlines()
    for line in lines:
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            name = canonical(requirement.name)
            assert name in locked, name
            assert requirement.specifier.contains(locked[name], prereleases=True), name


@pytest.mark.skipif(os.environ.get("NMBRS_PROXY_UNLOCKED") == "1",
                    reason="`make test-latest` runs on an unlocked resolve on purpose")
def test_the_suite_runs_on_exactly_the_test_lock() -> None:
    """Every pinned package is installed at its pinned version, and nothing else is installed
    beside them but the project itself (and pip, which comes with the venv)."""
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    locked = pins(TEST_LOCK)
    for name, version in locked.items():
        assert installed.get(name) == version, (
            f"{name}: installed {installed.get(name)}, locked {version}: run `make setup`")
    extra = set(installed) - set(locked) - {"pip", "nmbrs-proxy"}
    assert not extra, f"installed but not locked: {sorted(extra)}"
