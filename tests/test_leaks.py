"""The suite-wide leak check itself: it sees every record, knows the sandbox's secrets, and
finds one when it is there (so that its silence at the end of the run means something)."""

from __future__ import annotations

import logging

import pytest

from proxy.sandbox import issued_secrets
from tests.conftest import CLIENT_SECRET, DEMO_KEY, RunningSandbox
from tests.leaks import LogCapture, find_leaks

LONG = "Qm9ndXMtcmVmcmVzaC10b2tlbi12YWx1ZQ"


@pytest.mark.parametrize(
    ("lines", "secrets", "found"),
    [
        ([f"x {LONG} y"], {LONG}, [LONG]),
        ([LONG], {LONG}, [LONG]),
        ([f"...{LONG}"], {LONG}, [LONG]),
        ([LONG[:-1]], {LONG}, []),
        (["a s3cr:et%+x b"], {"s3cr:et%+x"}, ["s3cr:et%+x"]),  # short: searched whole
        (["pw appears in words like pwned"], {"pw"}, []),  # too short to search
        ([f"{LONG} and {LONG[:20]}ZZ"], {LONG, LONG[:20] + "ZZ"}, sorted([LONG, LONG[:20] + "ZZ"])),
        (["nothing"], set(), []),
    ],
)
def test_find_leaks(lines: list[str], secrets: set[str], found: list[str]) -> None:
    assert [leak.secret for leak in find_leaks(lines, secrets)] == found


def test_a_leak_report_does_not_repeat_the_secret() -> None:
    (leak,) = find_leaks([f"x {LONG} y"], {LONG})
    assert LONG not in str(leak)


async def test_the_sandbox_records_what_it_hands_out(nmbrs: RunningSandbox) -> None:
    tokens = nmbrs.tokens()
    secrets = issued_secrets()
    assert tokens.access_token in secrets
    assert tokens.refresh_token in secrets
    assert CLIENT_SECRET in secrets
    assert DEMO_KEY in secrets


async def test_the_check_finds_a_secret_in_a_log_line(nmbrs: RunningSandbox) -> None:
    """Through the same capture the run uses: a token in plain words is a leak; a token in a
    form the redaction rules know is masked."""
    tokens = nmbrs.tokens()
    assert tokens.refresh_token is not None
    capture = LogCapture()
    logger = logging.getLogger("tests.leaks.canary")
    logger.handlers = [capture]
    logger.propagate = False  # kept away from the run's own capture
    logger.setLevel(logging.DEBUG)
    logger.info("the refresh token is %s", tokens.refresh_token)
    logger.info("refresh_token=%s", tokens.refresh_token)
    logger.info("Authorization: Bearer %s", tokens.access_token)
    leaks = find_leaks(capture.lines, issued_secrets())
    assert [leak.line for leak in leaks] == [capture.lines[0]]


def test_the_run_captures_every_level(no_sandbox_secret_in_any_log_line: LogCapture) -> None:
    before = len(no_sandbox_secret_in_any_log_line.lines)
    logging.getLogger("proxy.tests").debug("a debug line from %s", "a test")
    assert no_sandbox_secret_in_any_log_line.lines[before:] == [
        "DEBUG proxy.tests: a debug line from a test"
    ]
