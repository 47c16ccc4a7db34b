"""What a string in the file may stand for: `env:NAME` (a variable of the environment) or
`file:PATH` (a file's text, its last line ending dropped), so secrets need not sit in the file.

`_Context` is all a value parser may look at: the environment, the folder that relative paths
are relative to, and the list that collects every problem. Only `file:` touches the disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from proxy.config.problems import _Invalid, _reason

_ENV_PREFIX: Final = "env:"
_FILE_PREFIX: Final = "file:"


@dataclass
class _Context:
    """What parsers may look at: the folder for relative paths and the environment."""

    base_dir: Path
    environ: Mapping[str, str]
    problems: list[str] = field(default_factory=list)

    def resolve(self, text: str) -> str:
        """The value an `env:NAME` or `file:PATH` reference stands for; a literal as it is."""
        if text.startswith(_ENV_PREFIX):
            return self._env(text.removeprefix(_ENV_PREFIX))
        if text.startswith(_FILE_PREFIX):
            return self._file(text.removeprefix(_FILE_PREFIX))
        return text

    def path(self, text: str) -> Path:
        return (self.base_dir / text).absolute()

    def _env(self, name: str) -> str:
        if not name:
            raise _Invalid("an env: reference needs a variable name")
        value = self.environ.get(name)
        if value is None:
            raise _Invalid(f"environment variable {name} is not set")
        if not value:
            raise _Invalid(f"environment variable {name} is empty")
        return value

    def _file(self, name: str) -> str:
        if not name:
            raise _Invalid("a file: reference needs a path")
        path = self.path(name)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as err:
            raise _Invalid(f"cannot read file {path} ({_reason(err)})") from err
        except UnicodeDecodeError as err:
            raise _Invalid(f"cannot read file {path} (not UTF-8 text)") from err
        return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
