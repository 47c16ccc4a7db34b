"""Which store `[store] backend` opens, and that a file store never loads the Redis client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from proxy.config import StoreSettings
from proxy.tokens.backends import describe_store, open_store
from proxy.tokens.redis_store import RedisStore
from proxy.tokens.store import FileStore

_PROBE = """
import json, sys
from pathlib import Path
from proxy.config import StoreSettings
from proxy.tokens.backends import open_store
import proxy.app, proxy.cli, proxy.server  # what `serve` imports
store = open_store(StoreSettings(path=Path(sys.argv[1])))
print(json.dumps({"store": type(store).__name__, "redis": "redis" in sys.modules}))
"""


def test_a_file_store_is_opened_without_the_redis_client(tmp_path: Path) -> None:
    """The client library costs a serving process 10 MB: only a Redis store loads it."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "tokens.json")],
                          capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == {"store": "FileStore", "redis": False}


def test_the_backend_named_is_the_store_opened(tmp_path: Path) -> None:
    file = StoreSettings(path=tmp_path / "tokens.json")
    redis = StoreSettings(backend="redis", url="redis://127.0.0.1:6390/0")
    assert isinstance(open_store(file), FileStore)
    assert isinstance(open_store(redis), RedisStore)  # connects lazily: no server needed
    assert describe_store(redis) == "redis redis://127.0.0.1:6390/0"
    assert describe_store(file) == f"file {tmp_path / 'tokens.json'}"
