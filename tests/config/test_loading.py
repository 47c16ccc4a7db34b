"""Finding the configuration file, reading it, and the one error that lists every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, config_path, load
from proxy.core.secret import Secret
from tests.config.helpers import conn


def test_load_resolves_paths_against_the_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "secret.txt").write_text("from-file\n", encoding="utf-8")
    (folder / "proxy.toml").write_text(
        """
        [store]
        path = "tokens.json"
        [connections.nmbrs]
        provider = "nmbrs"
        client_id = "id"
        client_secret = "file:secret.txt"
        subscription_key = "env:KEY"
        redirect_uri = "http://localhost:8080/_proxy/callback"
        scopes = ["offline_access"]
        """,
        encoding="utf-8",
    )

    settings = load(folder / "proxy.toml", {"KEY": "k"})

    assert settings.store.path == folder / "tokens.json"
    assert conn(settings).client_secret == Secret("from-file")


def test_load_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert caught.value.problems == (
        f"{path}: cannot read the configuration file (No such file or directory)",
    )


def test_load_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {})
    assert caught.value.problems == (
        f"{tmp_path}: cannot read the configuration file (Is a directory)",
    )


def test_load_bad_toml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nhost = "x"\nport = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in problem


def test_load_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert caught.value.problems == (f"{path}: the configuration file is not UTF-8 text",)


def test_config_error_lists_every_problem() -> None:
    err = ConfigError(["a.b: required", "c: unknown key"])
    assert isinstance(err, ValueError)
    assert err.problems == ("a.b: required", "c: unknown key")
    assert str(err) == "invalid configuration:\n  - a.b: required\n  - c: unknown key"


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        pytest.param(None, {}, "config.toml", id="default"),
        pytest.param(None, {"NMBRS_PROXY_CONFIG": "/etc/p.toml"}, "/etc/p.toml", id="env"),
        pytest.param("cli.toml", {"NMBRS_PROXY_CONFIG": "/etc/p.toml"}, "cli.toml", id="cli-wins"),
        pytest.param(None, {"NMBRS_PROXY_CONFIG": ""}, "config.toml", id="empty-env-ignored"),
        pytest.param("", {"NMBRS_PROXY_CONFIG": "e.toml"}, "e.toml", id="empty-cli-ignored"),
    ],
)
def test_config_path(cli: str | None, environ: dict[str, str], expected: str) -> None:
    assert config_path(cli, environ) == Path(expected)
