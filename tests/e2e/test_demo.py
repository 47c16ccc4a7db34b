"""`nmbrs-proxy demo` as `make demo` runs it: sandbox, proxy, consent, and working requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_demo_links_itself_and_its_printed_requests_work() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--smoke", "--port", "0", "--sandbox-port", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=dict(os.environ), check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    curls = [line for line in lines if line.strip().startswith("curl -s")]
    checks = [line for line in lines if line.startswith(("ok", "FAIL"))]
    assert len(curls) == 4
    assert len(checks) == 4
    assert all(line.startswith("ok   200") for line in checks)
    assert "connection nmbrs linked" in result.stderr
