"""The file store: durable, atomic, private; a crash never leaves a torn file."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.oauth.token_set import TokenSet
from proxy.tokens.store import FileStore, StoreError


def _tokens(n: int, padding: int = 0) -> TokenSet:
    return TokenSet(access_token=f"access-{n}" + "x" * padding, expires_at=2000.0 + n,
                    obtained_at=1000.0, refresh_token=f"refresh-{n}", refresh_issued_at=1000.0,
                    scopes=("a",), version=n)


async def test_save_load_delete(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state" / "tokens.json")
    assert await store.load("nmbrs") is None
    await store.save("nmbrs", _tokens(1))
    await store.save("other", _tokens(2))
    assert await store.load("nmbrs") == _tokens(1)
    assert await store.load("other") == _tokens(2)
    await store.delete("nmbrs")
    assert await store.load("nmbrs") is None
    assert await store.load("other") == _tokens(2)


async def test_the_file_and_its_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tokens.json"
    store = FileStore(path)
    await store.save("nmbrs", _tokens(1))
    lease = await store.acquire("nmbrs")
    assert lease is not None
    await lease.release()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    names = sorted(p.name for p in path.parent.iterdir())  # no temp file left
    assert names == [".tokens.json.lock", ".tokens.json.nmbrs.lease", "tokens.json"]
    for name in names:
        assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600


async def test_a_store_that_is_not_a_token_file_is_an_error_not_an_empty_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match="is not a token file"):
        await FileStore(path).load("nmbrs")
    with pytest.raises(StoreError):
        await FileStore(path).save("nmbrs", _tokens(1))
    assert path.read_text() == "{not json"  # nothing overwritten


def test_repr_names_the_path_only(tmp_path: Path) -> None:
    assert repr(FileStore(tmp_path / "t.json")) == f"FileStore({str(tmp_path / 't.json')!r})"


_WRITER = """
import asyncio, sys
from pathlib import Path
from proxy.oauth.token_set import TokenSet
from proxy.tokens.store import FileStore

async def main():
    store = FileStore(Path(sys.argv[1]))
    n = 0
    print("ready", flush=True)
    while True:
        n += 1
        await store.save("nmbrs", TokenSet(access_token=f"access-{n}" + "x" * 200_000,
            expires_at=2000.0 + n, obtained_at=1000.0, refresh_token=f"refresh-{n}",
            refresh_issued_at=1000.0, scopes=("a",), version=n))

asyncio.run(main())
"""


def test_a_kill_at_any_moment_leaves_the_old_or_the_new_set(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    rng = random.Random(20261123)
    last_version = 0
    for _ in range(12):
        with subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        ) as writer:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.0, 0.15))
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=10)
        document = json.loads(path.read_bytes()) if path.exists() else None
        if document is None:
            continue
        entry = document["connections"]["nmbrs"]
        version = entry["version"]
        # whole: the access token, refresh token and version belong to one save
        assert entry["access_token"] == f"access-{version}" + "x" * 200_000
        assert entry["refresh_token"] == f"refresh-{version}"
        last_version = version
    assert last_version > 0, "no save ever completed: the test proved nothing"
