"""Redaction rules as a table, and the logging filter on real records."""

from __future__ import annotations

import io
import logging

import pytest

from proxy.core.errors import BadGateway
from proxy.core.redact import MASK, RedactingFilter, install, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXBhcnQ"
OPAQUE = "Qm9ndXMtcmVmcmVzaC10b2tlbi12YWx1ZS0xMjM0NTY3ODkw"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nothing secret here", "nothing secret here"),
        (f"Authorization: Bearer {OPAQUE}", f"Authorization: {MASK}"),
        (f"sent Bearer {OPAQUE} upstream", f"sent Bearer {MASK} upstream"),
        ("Basic UGFydG5lcjpzZWNyZXQ=", f"Basic {MASK}"),
        ("X-Proxy-Key: npk_abcdefghijklmnopqrstuvwxyz", f"X-Proxy-Key: {MASK}"),
        ("x-subscription-key:abc123", f"x-subscription-key:{MASK}"),
        ("Cookie: nmbrs_proxy_session=gAAAAAB; other=1", f"Cookie: {MASK}"),
        ("Set-Cookie: s=abc; HttpOnly", f"Set-Cookie: {MASK}"),
        (f"{{'Authorization': 'Bearer {OPAQUE}', 'Accept': '*/*'}}",
         f"{{'Authorization': '{MASK}', 'Accept': '*/*'}}"),
        (f'{{"refresh_token": "{OPAQUE}", "scope": "a b"}}',
         f'{{"refresh_token": "{MASK}", "scope": "a b"}}'),
        (f'{{"access_token":"{JWT}","expires_in":3600}}',
         f'{{"access_token":"{MASK}","expires_in":3600}}'),
        ('{"client_secret": "s3cr\\"et"}', f'{{"client_secret": "{MASK}"}}'),
        (f"GET /_proxy/callback?code={OPAQUE}&state=abc HTTP/1.1",
         f"GET /_proxy/callback?code={MASK}&state=abc HTTP/1.1"),
        (f"grant_type=refresh_token&refresh_token={OPAQUE}",
         f"grant_type=refresh_token&refresh_token={MASK}"),
        ("client_id=x&client_secret=s3cr%3Aet", f"client_id=x&client_secret={MASK}"),
        (f"next=%2Fcb%3Fcode%3D{OPAQUE}", f"next=%2Fcb%3Fcode%3D{MASK}"),
        ("code_verifier=abc-def", f"code_verifier={MASK}"),
        ("code=%41bc%2Fd&x=1", f"code={MASK}&x=1"),
        ("q=%3Fcode%3Dabc%26x%3D1", f"q=%3Fcode%3D{MASK}%26x%3D1"),
        ("access_token=abc&token=def", f"access_token={MASK}&token={MASK}"),
        (f"token {JWT} expired", f"token {MASK} expired"),
        ("key npk_0123456789abcdefXYZ seen", f"key npk_{MASK} seen"),
        ("status code 401", "status code 401"),
        ("the encoded=1 key_sha256=ab12", "the encoded=1 key_sha256=ab12"),
        ("decode=1 unicode=2", "decode=1 unicode=2"),
        ("b'X-Proxy-Key: k\\x00y'", f"b'X-Proxy-Key: {MASK}'"),
    ],
)
def test_redaction_rules(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_literals_are_masked_wherever_they_appear() -> None:
    assert redact("a s3cr:et%+x b", ["s3cr:et%+x"]) == f"a {MASK} b"


def test_a_problem_detail_is_redacted() -> None:
    error = BadGateway(f"upstream said refresh_token={OPAQUE}")
    assert OPAQUE not in str(error.problem())


def _logger(name: str, *literals: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(literals))
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_the_filter_cleans_messages_arguments_and_tracebacks() -> None:
    logger, stream = _logger("tests.redact.filter", "configured-secret-value")
    logger.info("token %s for %s", JWT, "x")
    logger.warning("Authorization: Bearer %s", OPAQUE)
    logger.info("the client secret is configured-secret-value")
    try:
        int(f"bad refresh_token={OPAQUE}")
    except ValueError:
        logger.exception("failed")
    logger.info("a stack", stack_info=True, extra={})
    text = stream.getvalue()
    for secret in (JWT, OPAQUE, "configured-secret-value"):
        assert secret not in text
    assert "ValueError: invalid literal for int() with base 10: 'bad refresh_token=[redacted]'" \
        in text
    assert text.count(MASK) >= 4


def test_fields_that_repeat_a_secret_of_the_message_are_cleaned_too() -> None:
    record = logging.makeLogRecord({
        "name": "proxy.access", "msg": "GET %s 200", "args": (f"/api/{JWT}",),
        "path": f"/api/{JWT}", "status": 200, "connection": "nmbrs"})
    RedactingFilter().filter(record)
    fields = vars(record)
    assert JWT not in record.getMessage()
    assert fields["path"] == f"/api/{MASK}"
    assert (fields["status"], fields["connection"], record.name) == (200, "nmbrs", "proxy.access")


def test_fields_of_a_clean_message_are_left_alone() -> None:
    record = logging.makeLogRecord({  # the path looks like a parameter; the message is clean
        "name": "proxy.access", "msg": "GET /api 200", "path": "/api/a=b:c"})
    RedactingFilter().filter(record)
    assert vars(record)["path"] == "/api/a=b:c"


def test_short_literals_are_not_registered() -> None:
    redactor = RedactingFilter(["abc", "longer-secret"])
    assert redactor.redact("abc longer-secret") == f"abc {MASK}"


def test_install_puts_one_filter_on_every_root_handler() -> None:
    root = logging.getLogger("tests.redact.install")
    root.handlers = [logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())]
    first = install(["first-secret"], logger=root)
    second = install(["second-secret"], logger=root)
    assert first is second
    for handler in root.handlers:
        assert handler.filters == [first]
    assert first.redact("first-secret second-secret") == f"{MASK} {MASK}"
