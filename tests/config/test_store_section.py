"""The [store] table: the file and Redis backends, the encryption key, and what each refuses."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from proxy.config import ConfigError, parse
from proxy.core.secret import Secret
from tests.config.helpers import config, problems

SESSION_SECRET = "a-session-secret-of-16+"
FERNET_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()  # a valid Fernet key (not random)
REDIS: dict[str, object] = {
    "store.backend": "redis",
    "store.url": "redis://redis.internal:6379/0",
    "session.secret": SESSION_SECRET,
}


def test_a_redis_store_with_every_key(tmp_path: Path) -> None:
    settings = parse(
        config({**REDIS, "store.url": "rediss://proxy@redis.internal:6380/2",
                "store.password": "env:REDIS_PASSWORD", "store.key_prefix": "payroll:",
                "store.encryption_key": "env:STORE_KEY", "store.lease_seconds": 5,
                "store.timeout_seconds": 0.5}),
        base_dir=tmp_path,
        environ={"REDIS_PASSWORD": "pw", "STORE_KEY": FERNET_KEY},
    )
    store = settings.store
    assert store.backend == "redis"
    assert store.url == "rediss://proxy@redis.internal:6380/2"
    assert store.password == Secret("pw")
    assert store.key_prefix == "payroll:"
    assert store.encryption_key == Secret(FERNET_KEY)
    assert store.lease_seconds == 5.0
    assert store.timeout_seconds == 0.5


def test_redis_store_defaults(tmp_path: Path) -> None:
    store = parse(config(REDIS), base_dir=tmp_path, environ={}).store
    assert (store.password, store.key_prefix, store.encryption_key) == (None, "nmbrs-proxy:", None)
    assert (store.lease_seconds, store.timeout_seconds) == (10.0, 2.0)


def test_the_file_store_takes_an_encryption_key(tmp_path: Path) -> None:
    store = parse(config({"store.encryption_key": FERNET_KEY}), base_dir=tmp_path,
                  environ={}).store
    assert store.encryption_key == Secret(FERNET_KEY)


_NEEDS_SESSION = (
    'session.secret: required when store.backend = "redis": every replica must read the '
    "consent cookie the others set"
)
_KEY_HINT = (
    "store.encryption_key: must be a Fernet key: 32 random bytes, URL-safe base64 (44 "
    "characters); make one with python3 -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)
STORE_RULES = [
    ({"store.backend": "redis"},
     ['store.url: required when store.backend = "redis"', _NEEDS_SESSION], "redis-bare"),
    ({"store.backend": "redis", "store.url": "redis://r"}, [_NEEDS_SESSION],
     "redis-without-session-secret"),
    ({**REDIS, "session.secret": "short"}, ["session.secret: must be at least 16 characters"],
     "redis-bad-session-secret-reported-once"),
    ({**REDIS, "store.url": "http://redis:6379"},
     ["store.url: must be a redis:// or rediss:// URL"], "url-scheme"),
    ({**REDIS, "store.url": "redis://:hunter2@redis:6379"},
     ['store.url: must not include a password: set store.password (e.g. "env:NAME")'],
     "url-password"),
    ({**REDIS, "store.url": "redis:///0"}, ["store.url: must include a host"], "url-no-host"),
    ({**REDIS, "store.url": "redis://redis:99999"}, ["store.url: is not a valid URL"],
     "url-port"),
    ({**REDIS, "store.url": "redis://redis/zero"},
     ["store.url: the path must be a database number, such as /0"], "url-db"),
    ({**REDIS, "store.url": "redis://redis/\u00b2"},
     ["store.url: the path must be a database number, such as /0"], "url-db-superscript"),
    ({**REDIS, "store.url": "redis://redis/0?ssl_cert_reqs=none"},
     ["store.url: must not include a query or fragment"], "url-query"),
    ({**REDIS, "store.url": "redis://re dis"}, ["store.url: must not contain whitespace"],
     "url-space"),
    ({**REDIS, "store.url": 6379}, ["store.url: expected a string, got an integer"], "url-int"),
    ({**REDIS, "store.path": "tokens.json"},
     ['store.path: only used when store.backend = "file"'], "path-with-redis"),
    ({"store.url": "redis://redis"}, ['store.url: only used when store.backend = "redis"'],
     "url-with-file"),
    ({"store.password": "pw", "store.lease_seconds": 3},
     ['store.password: only used when store.backend = "redis"',
      'store.lease_seconds: only used when store.backend = "redis"'], "redis-keys-with-file"),
    ({"store.encryption_key": "too-short"}, [_KEY_HINT], "key-short"),
    ({"store.encryption_key": "x" * 44}, [_KEY_HINT], "key-not-base64"),
    ({**REDIS, "store.lease_seconds": 0.5}, ["store.lease_seconds: must be at least 1"],
     "lease-short"),
    ({**REDIS, "store.lease_seconds": 0}, ["store.lease_seconds: must be greater than 0"],
     "lease-zero"),
    ({**REDIS, "store.timeout_seconds": 0}, ["store.timeout_seconds: must be greater than 0"],
     "timeout-zero"),
    ({**REDIS, "store.timeout_seconds": "2"},
     ["store.timeout_seconds: expected a number, got a string"], "timeout-str"),
    ({**REDIS, "store.key_prefix": "a b"}, ["store.key_prefix: must not contain whitespace"],
     "prefix-space"),
    ({**REDIS, "store.password": "env:NOPE"},
     ["store.password: environment variable NOPE is not set"], "password-env-missing"),
    ({**REDIS, "store.lease_second": 3},
     ["store.lease_second: unknown key (did you mean 'lease_seconds'?)"],
     "store-unknown-suggested"),
]


@pytest.mark.parametrize(
    ("edits", "expected"),
    [pytest.param(edits, expected, id=id_) for edits, expected, id_ in STORE_RULES],
)
def test_store_rules(tmp_path: Path, edits: dict[str, object], expected: list[str]) -> None:
    assert problems(config(edits), tmp_path) == tuple(expected)


def test_store_secrets_stay_out_of_reprs_and_problems(tmp_path: Path) -> None:
    environ = {"REDIS_PASSWORD": "redis-SENTINEL-5", "STORE_KEY": FERNET_KEY}
    edits = {**REDIS, "store.password": "env:REDIS_PASSWORD",
             "store.encryption_key": "env:STORE_KEY"}
    settings = parse(config(edits), base_dir=tmp_path, environ=environ)
    shown = repr(settings) + str(settings)
    assert "SENTINEL" not in shown
    assert FERNET_KEY not in shown
    with pytest.raises(ConfigError) as caught:
        parse(config({**edits, "store.encryption_key": "env:REDIS_PASSWORD"}),
              base_dir=tmp_path, environ=environ)
    assert "SENTINEL" not in str(caught.value)
