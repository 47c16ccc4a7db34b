"""The suite-wide leak check: every log line the test run produces, searched for every secret
the sandbox was configured with or handed out (proxy.sandbox.issued_secrets()).

The lines are kept as the command line would write them: formatted, then passed through the
same redaction rules (proxy/core/redact.py) that `nmbrs-proxy` installs on every log handler. The
configured-secret literals that the command line also registers are not known here, so a
secret that only literal masking would catch still counts as a leak.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from proxy.core.redact import redact

# Secrets are looked up by their first KEY_LENGTH characters; shorter ones are searched whole.
KEY_LENGTH: Final = 12
# Shorter secrets (a test's client secret "pw") would match random text: they are not searched.
MIN_SECRET_LENGTH: Final = 8


class LogCapture(logging.Handler):
    """Keeps every record as a redacted, formatted line (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def addFilter(self, filter: object) -> None:  # noqa: A002, N802 - logging's own names
        """Filters others install (the CLI's redaction, in CLI tests) do not apply here: this
        handler applies the pattern rules itself, and only those."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(redact(self.format(record)))
        except Exception:
            self.lines.append(f"{record.levelname} {record.name}: {record.msg!r} {record.args!r}")


@dataclass(frozen=True)
class Leak:
    secret: str
    line: str

    def __str__(self) -> str:
        shown = self.secret[:6] + "…" if len(self.secret) > 6 else "…"
        line = self.line.replace(self.secret, "<THE SECRET>")
        return f"secret {shown} (length {len(self.secret)}) in: {line[:300]}"


def find_leaks(lines: Iterable[str], secrets: Collection[str]) -> list[Leak]:
    """Every (secret, line) where the line contains the secret; one pass over the text for the
    long secrets (indexed by prefix), a plain search for the few short ones."""
    by_prefix: dict[str, list[str]] = {}
    short: list[str] = []
    for secret in secrets:
        if len(secret) >= KEY_LENGTH:
            by_prefix.setdefault(secret[:KEY_LENGTH], []).append(secret)
        elif len(secret) >= MIN_SECRET_LENGTH:
            short.append(secret)
    leaks: list[Leak] = []
    for line in lines:
        found = {s for s in short if s in line}
        for start in range(len(line) - KEY_LENGTH + 1):
            for secret in by_prefix.get(line[start : start + KEY_LENGTH], ()):
                if line.startswith(secret, start):
                    found.add(secret)
        leaks.extend(Leak(secret, line) for secret in sorted(found))
    return leaks
