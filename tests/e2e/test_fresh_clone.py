"""The newcomer's path: a fresh clone, no `.venv`, the README's set-up, then the demo.

It clones the committed HEAD (uncommitted changes are not in it), runs `make setup` there (what
both `make demo` and `make test` run first: the venv from the lock, the Debian programs), and
runs the demo's own smoke check from that venv. A missing install step fails here, not on a
user's machine. About 30 seconds, most of it pip installing the lock from its cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _environment() -> dict[str, str]:
    """The caller's environment less anything that points into this checkout's venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"} and not k.startswith("PYTEST")}
    paths = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in paths if not p.startswith(str(ROOT)))
    return env


def test_a_fresh_clone_sets_itself_up_and_runs_the_demo(tmp_path: Path) -> None:
    git, make = shutil.which("git"), shutil.which("make")
    if git is None or make is None or not (ROOT / ".git").exists():
        pytest.fail("the newcomer test needs git, make and a git checkout")
    clone = tmp_path / "nmbrs-proxy"
    subprocess.run([git, "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=60)
    assert not (clone / ".venv").exists()
    env = _environment()
    setup = subprocess.run([make, "setup"], cwd=clone, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert setup.returncode == 0, setup.stdout[-4000:] + setup.stderr[-4000:]
    demo = subprocess.run(
        [str(clone / ".venv" / "bin" / "nmbrs-proxy"), "demo", "--smoke", "--port", "0",
         "--sandbox-port", "0"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    checks = [line for line in demo.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert len(checks) == 4
    assert all(line.startswith("ok   200") for line in checks), checks
    # and the test command's own checks are wired to that venv
    dry = subprocess.run([make, "-n", "test"], cwd=clone, env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    for tool in (".venv/bin/ruff check", ".venv/bin/mypy", ".venv/bin/pytest"):
        assert tool in dry.stdout, dry.stdout
