"""The hot path's shortcuts give the answers of the rules they shortcut: each is checked against
the plain rule, by table and by generated cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core import redact as redact_rules
from proxy.core.errors import BadRequest, HeadersTooLarge
from proxy.core.http import match_prefix
from proxy.forwarding.shaping import Shaper
from proxy.inbound import guard
from proxy.inbound.policy import _parse_source, source_address


def _longest_match(prefixes: list[str], path: str) -> str | None:
    """The rule as first written: the longest prefix that `path` starts with, or is."""
    best: str | None = None
    for prefix in prefixes:
        if (path.startswith(prefix) or path == prefix[:-1]) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return best


@pytest.mark.parametrize(
    ("prefixes", "path", "expected"),
    [
        (["/"], "/api/companies", "/"),
        (["/", "/acme/"], "/acme/api", "/acme/"),
        (["/", "/acme/"], "/acme", "/acme/"),
        (["/", "/acme/"], "/acmex/api", "/"),
        (["/acme/"], "/other", None),
        (["/a/", "/a/b/"], "/a/b/c", "/a/b/"),
        (["/a/", "/a/b/"], "/a/b", "/a/b/"),
        (["/a/", "/a/b/"], "/a/bc", "/a/"),
        ([], "/x", None),
    ],
)
def test_match_prefix(prefixes: list[str], path: str, expected: str | None) -> None:
    assert match_prefix(frozenset(prefixes), path) == expected
    assert _longest_match(prefixes, path) == expected


_SEGMENT = st.text(alphabet="ab.%", min_size=0, max_size=3)
_PATH = st.lists(_SEGMENT, max_size=4).map(lambda parts: "/" + "/".join(parts))
_PREFIX = st.lists(st.text(alphabet="ab.", min_size=1, max_size=2), max_size=3).map(
    lambda parts: "/" + "".join(f"{part}/" for part in parts))


@settings(max_examples=500, deadline=None)
@given(prefixes=st.lists(_PREFIX, max_size=6), path=_PATH)
def test_match_prefix_agrees_with_the_longest_match_rule(prefixes: list[str], path: str) -> None:
    assert match_prefix(frozenset(prefixes), path) == _longest_match(prefixes, path)


def _verdict(check: object, *args: object) -> str:
    try:
        check(*args)  # type: ignore[operator]
    except (BadRequest, HeadersTooLarge) as error:
        return str(error)
    return "ok"


def _slow_check_path(path: str, monkeypatch: pytest.MonkeyPatch) -> str:
    with monkeypatch.context() as patch:
        patch.setattr(guard, "_plain_path", lambda _path: False)
        patch.setattr(guard, "_plain", lambda _segment: False)
        return _verdict(guard.check_path, path)


@pytest.mark.parametrize(
    "path",
    ["/api/companies", "/", "/a/", "/api/x;y=1", "/a/.b", "/a/..", "/a/%2e%2e", "/a//b",
     "/a\\b", "/a/%zz", "/a/%2F", "/a/\uff0e\uff0e", "/a/..;", "/caf\u00e9", "/a/%00",
     "/a b", "/a\tb"],
)
def test_check_path_fast_and_slow_agree(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _verdict(guard.check_path, path) == _slow_check_path(path, monkeypatch)


@settings(max_examples=300, deadline=None)
@given(path=st.lists(st.text(alphabet="ab.%2eE;/\\\t\uff0e\u00e9", max_size=5), max_size=4)
       .map(lambda parts: "/" + "/".join(parts)))
def test_check_path_fast_and_slow_agree_on_generated_paths(path: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        fast = _verdict(guard.check_path, path)
        patch.setattr(guard, "_plain_path", lambda _path: False)
        patch.setattr(guard, "_plain", lambda _segment: False)
        assert _verdict(guard.check_path, path) == fast


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.tuples(st.text(alphabet="aB-:\x00 ", min_size=1, max_size=4),
                                 st.text(alphabet="v\t\x01\x7f\u00e9\udcff ", max_size=4)),
                       max_size=4))
def test_check_headers_is_the_same_before_and_after_names_are_remembered(
    fields: list[tuple[str, str]]
) -> None:
    guard._GOOD_NAMES.clear()
    first = _verdict(guard.check_headers, fields)
    second = _verdict(guard.check_headers, fields)  # names that passed are now remembered
    guard._GOOD_NAMES.clear()
    assert first == second == _verdict(guard.check_headers, fields)
    assert all(guard._TOKEN.fullmatch(name) for name in guard._GOOD_NAMES)


def test_a_bad_header_name_is_never_remembered() -> None:
    guard._GOOD_NAMES.clear()
    with pytest.raises(BadRequest):
        guard.check_headers([("Bad Name", "v")])
    assert "Bad Name" not in guard._GOOD_NAMES
    guard.check_headers([("X-Good", "v")])
    assert "X-Good" in guard._GOOD_NAMES


@pytest.mark.parametrize(
    ("remote", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"), ("fe80::1%eth0", "fe80::1"),
     ("not-an-ip", None), ("", None), (None, None)],
)
def test_source_address_is_remembered_and_stays_right(
    remote: str | None, expected: str | None
) -> None:
    _parse_source.cache_clear()
    for _ in range(2):
        found = source_address(remote)
        assert (None if found is None else str(found)) == expected



async def test_an_unshaped_connection_admits_at_once_and_its_permit_holds_nothing() -> None:
    """The shortcut for a connection without rate or concurrency limits (the pause after a 429
    still holds: test_shaping.py, test_a_pause_holds_every_request_until_it_ends)."""
    gate = Shaper("c")
    permits = [await gate.admit() for _ in range(3)]
    for permit in permits:
        permit.release()
        permit.release()  # idempotent
    assert (gate.waiting, gate.counters.delayed, gate.counters.throttled) == (0, 0, 0)


def _redact_without_the_shortcut(text: str) -> str:
    for pattern, replacement in redact_rules._RULES:
        text = pattern.sub(replacement, text)
    return text


@pytest.mark.parametrize(
    "text",
    ["GET /api/companies 200", "Authorization: Bearer abc.def", "x eyJhbGciOi.eyJzdWIi.sig",
     "npk_abcdefghijkl", "code=123&x=1", "code%3D123", "BASIC dXNlcjpwYXNz", "{'token': 'v'}",
     "refreshed the token of connection nmbrs", ""],
)
def test_redaction_skips_only_text_no_rule_can_match(text: str) -> None:
    assert redact_rules.redact(text) == _redact_without_the_shortcut(text)


_PIECES = [*"abcdeyJnpk_:=%3DBbearsicoktn\"' .-/\r\n", "eyJ", "npk_", "Bearer ", "basic ",
           "%3D", "%3d", "token", "code", "x-proxy-key", "eyJhbGc.eyJzdWI.sig"]


@settings(max_examples=500, deadline=None)
@given(text=st.lists(st.sampled_from(_PIECES), max_size=15).map("".join))
def test_redaction_with_the_shortcut_agrees_on_generated_text(text: str) -> None:
    assert redact_rules.redact(text) == _redact_without_the_shortcut(text)
