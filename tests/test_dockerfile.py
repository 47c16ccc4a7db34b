"""The Dockerfile, checked against the code it packages (no container engine runs here)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from proxy.app import create_app
from proxy.config import Settings
from tests.locks import pins

ROOT = Path(__file__).parents[1]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_slim_base_and_a_non_root_user() -> None:
    instructions = _instructions()
    assert re.fullmatch(r"python:3\.1\d-slim", dict(instructions)["FROM"])
    user = dict(instructions)["USER"].split(":")[0]
    assert user not in {"root", "0"}


def test_the_entry_point_is_the_installed_serve_command() -> None:
    instructions = dict(_instructions())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(instructions["ENTRYPOINT"]) == ["nmbrs-proxy"]
    assert "nmbrs-proxy" in scripts
    assert json.loads(instructions["CMD"]) == ["serve"]


def test_the_healthcheck_probes_a_route_the_app_serves() -> None:
    instructions = _instructions()
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    match = re.search(r"NMBRS_PROXY_HEALTH_URL=http://127\.0\.0\.1:(\d+)(/\S+)", env)
    assert match is not None
    port, path = match.groups()
    assert any(keyword == "HEALTHCHECK" and "NMBRS_PROXY_HEALTH_URL" in rest
               for keyword, rest in instructions)
    assert f"EXPOSE {port}" in [f"{k} {r}" for k, r in instructions]
    app = create_app(Settings())
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert path in paths


def test_config_and_state_are_mounted_paths() -> None:
    instructions = _instructions()
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "NMBRS_PROXY_CONFIG=/etc/nmbrs-proxy/config.toml" in env
    assert ("VOLUME", '["/var/lib/nmbrs-proxy"]') in instructions
    for keyword, rest in instructions:
        if keyword == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_the_image_installs_the_runtime_lock_with_the_fast_extra() -> None:
    """The image gets the versions CI tested, hashes checked, and nothing unpinned after them."""
    runs = [rest for keyword, rest in _instructions() if keyword == "RUN"]
    assert any("pip install --require-hashes --no-deps -r requirements/runtime.lock" in run
               for run in runs)
    installs = [run for run in runs if "pip install" in run]
    assert all("--no-deps" in run for run in installs)
    locked = pins(ROOT / "requirements" / "runtime.lock")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(requirement.startswith("uvloop") for requirement in extras["fast"])
    assert "uvloop" in locked
    assert "setuptools" in locked  # the build backend, for --no-build-isolation
