"""`env:NAME` and `file:PATH` references: what they resolve to, anywhere, and their problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import parse
from proxy.core.secret import Secret
from tests.config.helpers import C, config, conn, problems


@pytest.mark.parametrize(
    ("files", "value", "expected"),
    [
        pytest.param({}, "env:CLIENT_ID", "id-from-env", id="env"),
        pytest.param({"id.txt": b"id-from-file\n"}, "file:id.txt", "id-from-file", id="file"),
        pytest.param({"id.txt": b"crlf\r\n"}, "file:id.txt", "crlf", id="file-crlf"),
        pytest.param({"id.txt": b"two\n\n"}, "file:id.txt", "two\n", id="file-one-newline-only"),
        pytest.param({"id.txt": b"no-newline"}, "file:id.txt", "no-newline", id="file-as-is"),
        pytest.param({"sub/id.txt": b"nested"}, "file:sub/id.txt", "nested", id="file-relative"),
        pytest.param({"id.txt": b"absolute"}, "file:{base}/id.txt", "absolute", id="file-absolute"),
    ],
)
def test_references_resolve(
    tmp_path: Path, files: dict[str, bytes], value: str, expected: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    data = config({f"{C}.client_id": value.replace("{base}", str(tmp_path))})

    settings = parse(data, base_dir=tmp_path, environ={"CLIENT_ID": "id-from-env"})

    assert conn(settings).client_id == expected


def test_references_resolve_everywhere(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("subscription-from-file\n", encoding="utf-8")
    data = config(
        {
            "server.host": "env:HOST",
            "store.path": "env:STORE",
            f"{C}.subscription_key": "file:key",
            f"{C}.scopes": ["offline_access", "env:SCOPE"],
        }
    )
    environ = {"HOST": "::1", "STORE": "tokens.json", "SCOPE": "company.info.read"}

    settings = parse(data, base_dir=tmp_path, environ=environ)

    assert settings.server.host == "::1"
    assert settings.store.path == tmp_path / "tokens.json"
    assert conn(settings).subscription_key == Secret("subscription-from-file")
    assert conn(settings).scopes == ("offline_access", "company.info.read")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("env:MISSING", "environment variable MISSING is not set", id="env-unset"),
        pytest.param("env:EMPTY", "environment variable EMPTY is empty", id="env-empty"),
        pytest.param("env:", "an env: reference needs a variable name", id="env-no-name"),
        pytest.param(
            "file:nope.txt",
            "cannot read file {base}/nope.txt (No such file or directory)",
            id="file-missing",
        ),
        pytest.param("file:.", "cannot read file {base} (Is a directory)", id="file-directory"),
        pytest.param(
            "file:latin1", "cannot read file {base}/latin1 (not UTF-8 text)", id="file-bytes"
        ),
        pytest.param("file:", "a file: reference needs a path", id="file-no-path"),
        pytest.param("file:blank", "must not be empty", id="file-only-newline"),
    ],
)
def test_reference_problems(tmp_path: Path, value: str, expected: str) -> None:
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    (tmp_path / "blank").write_bytes(b"\n")
    data = config({f"{C}.client_secret": value})

    found = problems(data, tmp_path, {"EMPTY": ""})

    assert found == (f"{C}.client_secret: " + expected.replace("{base}", str(tmp_path)),)
