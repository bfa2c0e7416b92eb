"""The worker's garbage-collector settings (`--gc-threshold`, `--gc-freeze`) reach a real worker process.

A node is started with each configuration and its worker's /metrics is read:
`ringcast_gc_threshold` is the process's `gc.get_threshold()[0]` and
`ringcast_gc_frozen_objects` its `gc.get_freeze_count()`, both read at scrape
time, so they show what the worker's collector actually does.
"""

from __future__ import annotations

import pytest

from common.settings import SettingsError
from node.config import NodeConfig

CPYTHON_DEFAULT_THRESHOLD = 700  # gc.get_threshold()[0] of a process that never called gc.set_threshold


@pytest.mark.parametrize(
    ("args", "threshold", "frozen"),
    [
        ((), NodeConfig().gc_threshold, True),  # the defaults
        (("--gc-threshold", "12345"), 12345, True),
        (("--gc-threshold", "0", "--no-gc-freeze"), CPYTHON_DEFAULT_THRESHOLD, False),
    ],
)
async def test_a_worker_runs_its_collector_as_the_settings_say(start_node, args, threshold, frozen):
    node = start_node(1, *args)
    assert node.metric(0, "ringcast_gc_threshold") == threshold
    frozen_objects = node.metric(0, "ringcast_gc_frozen_objects")
    # A started worker has tens of thousands of objects alive (modules, the app); frozen, all of them are counted.
    assert (frozen_objects > 10_000) if frozen else (frozen_objects == 0)


def test_the_defaults_raise_the_threshold_and_freeze():
    assert NodeConfig().gc_threshold == 100_000 and NodeConfig().gc_freeze is True


@pytest.mark.parametrize("value", [-1, 10_000_001])
def test_a_threshold_out_of_range_is_refused(value):
    with pytest.raises(SettingsError, match="gc_threshold"):
        NodeConfig(bus="memory", workers=1, gc_threshold=value).validate()
