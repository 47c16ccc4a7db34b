"""Fixtures the end-to-end suites share with tests/test_server.py (real `serve` processes)."""

from tests.test_server import processes, slow_upstream

__all__ = ["processes", "slow_upstream"]
