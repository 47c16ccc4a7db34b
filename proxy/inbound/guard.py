"""Requests that must never be forwarded, whoever sends them: pure rules on the request line and
headers, checked before access control and before any token is touched.

aiohttp's HTTP parser already answers 400 (text/plain, connection closed) to malformed
messages before any handler runs: CR, LF or NUL in a header, a control character in the
target, `Content-Length` together with `Transfer-Encoding`, two `Content-Length`s, a line over
8190 bytes, more than 128 header fields, obsolete line folding, a bad method token. These rules
repeat the header checks (another parser may be less strict) and add what a parser lets through
but a proxy must not:

- anything but an origin-form target (RFC 9112 §3.2): absolute-form (`GET http://host/`),
  authority-form (`CONNECT host:443`), asterisk-form (`OPTIONS *`); the forwarded URL is always
  the configured upstream plus the path, so these are refused rather than reinterpreted;
- the methods `CONNECT` (a tunnel) and `TRACE`/`TRACK` (the upstream would echo the request,
  credentials included, back to the caller);
- paths an upstream could normalise into another path than the one the prefix and the access
  rules saw: dot segments (`/../`, `/./`, percent-encoded `%2e%2e`, twice-encoded `%252e`,
  full-width dots, `..;`), empty segments (`//host`), backslashes, encoded slashes and
  backslashes (`%2F`, `%5C`), encoded control characters (`%00`, `%0d%0a`), bad percent-escapes;
  a fragment (`#`) in the target;
- HTTP versions other than 1.0 and 1.1;
- header values with control characters or bytes that are not UTF-8, names that are not
  tokens, conflicting framing (`Content-Length` with `Transfer-Encoding`, several
  `Content-Length`s), and more than MAX_HEADER_FIELDS fields or MAX_HEADER_BYTES bytes of
  headers (431).

Encoded slashes are refused outright, not only where they would change which prefix matches:
prefix matching, the clients' path rules and the upstream's own router would each have to
agree on whether `%2F` separates segments, and the only reading they all share is "it never
appears".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote

from proxy.core.errors import BadRequest, HeadersTooLarge
from proxy.core.http import split_target

MAX_HEADER_FIELDS: Final = 100
MAX_HEADER_BYTES: Final = 32 * 1024

REFUSED_METHODS: Final = {
    "CONNECT": "CONNECT (tunnelling) is not offered: the proxy only forwards to its upstream",
    "TRACE": "TRACE is refused: the upstream would echo the request, credentials included",
    "TRACK": "TRACK is refused: the upstream would echo the request, credentials included",
}
SUPPORTED_VERSIONS: Final = frozenset({(1, 0), (1, 1)})
# Valid tokens, none refused: nearly every request's method, checked with one lookup.
_USUAL_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (RFC 9110 §5.5)
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR: Final = re.compile(r"%(?:25)*(?:2f|5c)", re.IGNORECASE)
_DOTS: Final = frozenset({".", ".."})
# Header names seen to be valid tokens (the same few names come with every request).
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX: Final = 512


def check_request(
    method: str,
    target: str,
    version: tuple[int, int],
    headers: Iterable[tuple[str, str]],
) -> None:
    """Raise BadRequest (400) or HeadersTooLarge (431) for a request that must not go on."""
    check_method(method)
    if version not in SUPPORTED_VERSIONS:
        raise BadRequest(f"HTTP/{version[0]}.{version[1]} is not supported; use HTTP/1.1")
    check_target(target)
    check_headers(headers)


def check_method(method: str) -> None:
    if method in _USUAL_METHODS:
        return
    refusal = REFUSED_METHODS.get(method.upper())
    if refusal is not None:
        raise BadRequest(refusal)
    if not _TOKEN.fullmatch(method):
        raise BadRequest("the method is not a valid token")


def check_target(target: str) -> None:
    """The request target must be an origin-form path whose meaning no normalisation changes."""
    if not target.startswith("/"):
        if target == "*":
            raise BadRequest("the asterisk-form request target ('*') is not forwarded")
        if "://" in target:
            raise BadRequest(
                "absolute-form request targets are refused: send the path only; the proxy "
                "forwards to its configured upstream"
            )
        raise BadRequest("the request target must be a path starting with '/'")
    if "#" in target:
        raise BadRequest("the request target must not contain a fragment ('#')")
    path, _query = split_target(target)
    check_path(path)
    if not (target.isascii() and target.isprintable()) and _CONTROL.search(target):
        raise BadRequest("the request target contains a control character")


def check_path(path: str) -> None:
    """Refuse a path an upstream could read differently from the proxy (see the module doc)."""
    if _plain_path(path):
        return
    if "\\" in path:
        raise BadRequest("the path must not contain a backslash")
    if _BAD_ESCAPE.search(path):
        raise BadRequest("the path has a '%' that does not start a percent-escape")
    if _ENCODED_SEPARATOR.search(path):
        raise BadRequest("the path must not contain an encoded '/' or '\\' (%2F, %5C)")
    _check_segments(path.split("/")[1:])


def _check_segments(segments: list[str]) -> None:
    for index, segment in enumerate(segments):
        if not segment:
            if index < len(segments) - 1:  # a trailing "/" is fine, "//" is not
                raise BadRequest("the path must not contain an empty segment ('//')")
            continue
        if _plain(segment):
            continue
        decoded = _decoded(segment)
        if _CONTROL.search(decoded):
            raise BadRequest("the path contains an encoded control character")
        if _is_dot_segment(decoded):
            raise BadRequest("the path must not contain '.' or '..' segments, in any encoding")


def _plain_path(path: str) -> bool:
    """The common path, checked at once: printable ASCII, no escape, no backslash, no empty
    segment, and no segment that starts with a dot; every segment is then `_plain`."""
    return (path.startswith("/") and path.isascii() and path.isprintable()
            and "%" not in path and "\\" not in path and "//" not in path and "/." not in path)


def _plain(segment: str) -> bool:
    """Printable ASCII without escapes that does not start with a dot: nothing below can object
    (it decodes to itself, NFKC leaves it alone, it holds no control character), so the common
    segment skips the decoding."""
    return (segment.isascii() and segment.isprintable() and "%" not in segment
            and not segment.startswith("."))


def _decoded(segment: str) -> str:
    """The segment percent-decoded twice: what a server that decodes once too often would see."""
    once = unquote(segment, errors="surrogateescape")
    return unquote(once, errors="surrogateescape")


def _is_dot_segment(decoded: str) -> bool:
    candidates = {decoded, decoded.split(";", 1)[0]}  # "..;" is ".." to some servers
    candidates |= {unicodedata.normalize("NFKC", c) for c in tuple(candidates)}  # full-width dots
    return bool(candidates & _DOTS)


def check_headers(headers: Iterable[tuple[str, str]]) -> None:
    fields = 0
    size = 0
    content_lengths = 0
    transfer_encoding = False
    for name, value in headers:
        fields += 1
        size += len(name) + len(value) + 4  # ": " and CRLF
        if not (name in _GOOD_NAMES and value.isascii() and value.isprintable()):
            _check_field(name, value)
        lowered = name.lower()
        content_lengths += lowered == "content-length"
        transfer_encoding |= lowered == "transfer-encoding"
    if fields > MAX_HEADER_FIELDS:
        raise HeadersTooLarge(f"more than {MAX_HEADER_FIELDS} header fields")
    if size > MAX_HEADER_BYTES:
        raise HeadersTooLarge(f"more than {MAX_HEADER_BYTES} bytes of header fields")
    if content_lengths and transfer_encoding:
        raise BadRequest("Content-Length and Transfer-Encoding must not both be sent")
    if content_lengths > 1:
        raise BadRequest("Content-Length must be sent at most once")


def _check_field(name: str, value: str) -> None:
    if name not in _GOOD_NAMES:
        if not _TOKEN.fullmatch(name):
            raise BadRequest("a header name is not a valid token")
        if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
            _GOOD_NAMES.add(name)
    # Printable ASCII is valid UTF-8 without control characters: the slow checks are for the
    # rest (a tab is allowed but not printable, so it takes the slow way too).
    if value.isascii() and value.isprintable():
        return
    if _CONTROL.search(value):
        raise BadRequest(f"the {name} header contains a control character (CR, LF, NUL, ...)")
    if not _is_utf8(value):
        raise BadRequest(f"the {name} header is not valid UTF-8")


def _is_utf8(value: str) -> bool:
    """aiohttp decodes header bytes as UTF-8 with surrogate escapes: a surrogate is a bad byte."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
