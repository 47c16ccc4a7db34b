"""Which credential a 401 refused, and the key ring's switches."""

from __future__ import annotations

import json
import logging

import pytest
from multidict import CIMultiDict

from proxy.core.secret import Secret
from proxy.forwarding.credentials import (
    KEY_COMPLAINT_MAX_BYTES,
    KeyRing,
    rejects_key,
    rejects_token,
)

BEARER = ("WWW-Authenticate", 'Bearer error="invalid_token", error_description="expired"')
MISSING = {"statusCode": 401, "message": "Access denied due to missing subscription key. Make "
           "sure to include subscription key when making requests to an API."}
INVALID = {"statusCode": 401, "message": "Access denied due to invalid subscription key. Make "
           "sure to provide a valid key for an active subscription."}


def body(document: object) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("status", "headers", "payload", "token", "key"),
    [
        pytest.param(401, [BEARER], b"", True, False, id="bearer-challenge"),
        pytest.param(401, [("WWW-Authenticate", "bearer")], b"", True, False, id="bare-lowercase"),
        pytest.param(401, [("WWW-Authenticate", 'Basic realm="x"'), BEARER], b"", True, False,
                     id="second-challenge"),
        pytest.param(401, [BEARER], body(INVALID), True, False, id="bearer-wins-over-body"),
        pytest.param(401, [], body(INVALID), False, True, id="gateway-invalid-key"),
        pytest.param(401, [], body(MISSING), False, True, id="gateway-missing-key"),
        pytest.param(401, [], body({"message": "SUBSCRIPTION KEY disabled"}), False, True,
                     id="any-case"),
        pytest.param(401, [], body({"statusCode": 401, "message": "Unauthorized"}), False, False,
                     id="other-401"),
        pytest.param(401, [], body(["subscription key"]), False, False, id="not-an-object"),
        pytest.param(401, [], body({"message": 5}), False, False, id="message-not-text"),
        pytest.param(401, [], b"subscription key", False, False, id="not-json"),
        pytest.param(401, [], b"", False, False, id="empty"),
        pytest.param(401, [], body({"message": "subscription key", "pad": "x" *
                                    KEY_COMPLAINT_MAX_BYTES}), False, False, id="too-long"),
        pytest.param(403, [], body(INVALID), False, False, id="403"),
        pytest.param(200, [BEARER], b"", False, False, id="200"),
    ],
)
def test_which_credential_was_refused(
    status: int, headers: list[tuple[str, str]], payload: bytes, token: bool, key: bool
) -> None:
    fields = CIMultiDict(headers)
    assert rejects_token(status, fields) is token
    assert rejects_key(status, fields, payload) is key


def ring(count: int) -> KeyRing:
    return KeyRing("nmbrs", [Secret(f"key-{n}") for n in range(1, count + 1)])


def test_the_ring_moves_on_once_per_refusal_and_wraps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.forwarding.credentials")
    keys = ring(2)
    assert (keys.current, keys.value(keys.current)) == (0, "key-1")
    assert keys.rotate(0) is True
    assert keys.current == 1
    assert keys.rotate(0) is False  # a second request refused with key 1: already moved on
    assert keys.current == 1
    assert keys.rotate(1) is True  # the secondary is refused too: back to the primary
    assert keys.current == 0
    assert keys.rotations == 2
    assert caplog.messages == [
        "connection nmbrs: the gateway refused subscription key #1; switching to key #2",
        "connection nmbrs: the gateway refused subscription key #2; switching to key #1",
    ]
    assert "key-1" not in caplog.text


def test_one_key_never_moves() -> None:
    keys = ring(1)
    assert keys.rotate(0) is False
    assert keys.rotations == 0


def test_the_ring_never_shows_a_key() -> None:
    keys = ring(3)
    assert repr(keys) == "KeyRing('nmbrs', keys=3, current=0)"
    assert len(keys) == 3
    with pytest.raises(ValueError, match="at least one key"):
        KeyRing("nmbrs", [])
