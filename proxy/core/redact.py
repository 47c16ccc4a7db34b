"""Redaction: secrets taken out of any text before it is logged or shown. Pure rules, no I/O.

What counts as a secret here, by shape and by context (the value itself is replaced):
- credentials after an HTTP auth scheme: `Bearer …`, `Basic …`;
- header lines and mapping entries of credential headers: `Authorization`, `Proxy-Authorization`,
  `Cookie`, `Set-Cookie`, `X-Proxy-Key`, `X-Subscription-Key` (`Name: value`, `'name': 'value'`);
- OAuth and key parameters in queries, forms and JSON/dict text: `code`, `refresh_token`,
  `access_token`, `id_token`, `client_secret`, `code_verifier`, `token`, `password`,
  `subscription_key`, `api_key`, `key` (`name=value`, `"name": "value"`);
- anything shaped like a JWT (`eyJ….….…`) and proxy keys made by `nmbrs-proxy hash-key`
  (`npk_…`);
- literal values the caller registers (the configured client secrets, subscription keys and
  session secret), wherever they appear.

`RedactingFilter` applies these rules to every log record (message, arguments, traceback) on
the handlers it is installed on; the command line installs it on all of them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final

MASK: Final = "[redacted]"
# Literal values shorter than this are not registered: masking "abc" everywhere hides too much.
MIN_LITERAL_LENGTH: Final = 6

_PARAMS: Final = (
    "code|refresh_token|access_token|id_token|client_secret|code_verifier|token|password|"
    "subscription_key|api_key|apikey|key"
)
_HEADERS: Final = (
    "authorization|proxy-authorization|cookie|set-cookie|x-proxy-key|x-subscription-key"
)

_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # JWTs (three base64url parts, the first a JSON object: "eyJ")
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # keys made by `nmbrs-proxy hash-key`
    (re.compile(r"\bnpk_[A-Za-z0-9_-]{8,}"), "npk_" + MASK),
    # 'name': 'value' and "name": "value" (dict reprs, JSON)
    (
        re.compile(
            rf"""(?ix)(?P<q>["'])(?P<name>{_PARAMS}|{_HEADERS})(?P=q)(?P<sep>\s*:\s*)
            (?P<vq>["'])(?P<value>(?:\\.|(?!(?P=vq)).)*)(?P=vq)"""
        ),
        rf"\g<q>\g<name>\g<q>\g<sep>\g<vq>{MASK}\g<vq>",
    ),
    # Header lines: "Authorization: …", "X-Proxy-Key: …" (to the end of the line or quote)
    (
        re.compile(rf"(?im)(?<![\w-])(?P<name>{_HEADERS})(?P<sep>[ \t]*:[ \t]*)[^\r\n'\"]+"),
        rf"\g<name>\g<sep>{MASK}",
    ),
    # name=value in queries and forms, also percent-encoded ("code%3D…")
    (
        re.compile(
            rf"(?i)(?:(?<![\w-])|(?<=%3F)|(?<=%26))(?P<name>{_PARAMS})(?P<sep>=|%3D)"
            r"(?:[^&%\s\"'<>,;]|%(?!26))+"
        ),
        rf"\g<name>\g<sep>{MASK}",
    ),
    # what follows an auth scheme (RFC 9110 §11.4 token68)
    (re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"), rf"\g<scheme> {MASK}"),
)


def redact(text: str, literals: Iterable[str] = ()) -> str:
    """`text` with every secret the rules recognise, and every one of `literals`, masked."""
    for literal in literals:
        if literal and literal in text:
            text = text.replace(literal, MASK)
    if not _may_hold_a_secret(text):
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def _may_hold_a_secret(text: str) -> bool:
    """Whether any rule could match: each needs one of these marks, and most log lines (an
    access line: "GET /api/companies 200") have none, so they skip the six regexes.

    JWT "eyJ", hash-key "npk_", a mapping entry or header line ":", a parameter "=" or its
    encoding "%3D", an auth scheme "bearer" or "basic" (any case).
    """
    if ":" in text or "=" in text or "eyJ" in text or "npk_" in text:
        return True
    lowered = text.lower()
    return "%3d" in lowered or "bearer" in lowered or "basic" in lowered


# A record's own text attributes: the message (cleaned above) and names the code chose.
_RECORD_TEXT = frozenset({"msg", "name", "levelname", "pathname", "filename", "module",
                          "funcName", "threadName", "processName", "taskName", "exc_text",
                          "stack_info"})


class RedactingFilter(logging.Filter):
    """Masks secrets in each record that passes, in place, so every later handler sees it too.

    Install it on handlers (a filter on a logger misses records propagated from its children).
    """

    def __init__(self, literals: Iterable[str] = ()) -> None:
        super().__init__()
        self._literals: set[str] = set()
        self.remember(*literals)

    def remember(self, *values: str) -> None:
        """Mask these exact values too (the configured secrets), longest first."""
        self._literals.update(v for v in values if len(v) >= MIN_LITERAL_LENGTH)
        self._ordered = sorted(self._literals, key=len, reverse=True)

    def redact(self, text: str) -> str:
        return redact(text, self._ordered)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
            # A field given with `extra=` usually repeats part of the message (the access
            # line's path): when the message held a secret, they are cleaned too.
            for key, value in vars(record).items():
                if isinstance(value, str) and key not in _RECORD_TEXT:
                    setattr(record, key, self.redact(value))
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set: the traceback is cleaned once, here.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(literals: Iterable[str] = (), *, logger: logging.Logger | None = None
            ) -> RedactingFilter:
    """Put one RedactingFilter on every handler of `logger` (the root logger by default)."""
    target = logger if logger is not None else logging.getLogger()
    found = [f for h in target.handlers for f in h.filters if isinstance(f, RedactingFilter)]
    redactor = found[0] if found else RedactingFilter()
    redactor.remember(*literals)
    for handler in target.handlers:
        if redactor not in handler.filters:
            handler.addFilter(redactor)
    return redactor
