"""How a serving process prepares itself (proxy/workers.py), in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json
from proxy.workers import YOUNG_OBJECTS_PER_COLLECTION, settle_heap
before = gc.get_threshold()
settle_heap()
print(json.dumps({"frozen": gc.get_freeze_count(), "before": before,
                  "after": gc.get_threshold(), "young": YOUNG_OBJECTS_PER_COLLECTION}))
"""


def test_serving_moves_what_start_up_made_out_of_the_collectors_sight() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          check=True, timeout=60)
    seen = json.loads(done.stdout)
    assert seen["frozen"] > 1000  # the modules and objects of start-up, at least
    assert seen["after"] == [seen["young"], *seen["before"][1:]]
    assert seen["young"] > seen["before"][0]
