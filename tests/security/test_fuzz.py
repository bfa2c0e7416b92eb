"""The short fuzz run (CI): a few thousand random and mutated frames at a live worker.

The long run (>= 100,000 frames) is `python -m chaos.fuzz --frames 100000`;
its numbers are recorded in docs/security.md.
"""

from __future__ import annotations

import asyncio
import json
import os

from chaos import fuzz
from tests.security.bystanders import Bystanders
from tests.security.tokens import KEY1, bearer, flag, token

SHORT_RUN_FRAMES = 3000
RSS_GROWTH_BOUND_BYTES = 64 * 1024 * 1024  # generous: a leak per frame would show as far more over a long run


async def test_every_fuzz_frame_gets_its_documented_answer_and_the_worker_lives_on(start_node):
    node = start_node(1, *fuzz.WORKER_FLAGS)
    pid = node.worker_pid(0)
    bystanders = await Bystanders.join(node.ws_url())
    run = asyncio.ensure_future(fuzz.run(node.host, node.port, pid, SHORT_RUN_FRAMES, seed=7, connections=3))
    while not run.done():
        await bystanders.publish()
        await asyncio.wait({run}, timeout=0.05)
    report = run.result()
    print(report.as_dict())
    assert report.frames == SHORT_RUN_FRAMES
    assert report.failures == 0, report.failure_samples
    # The oracle was exercised: decoder-predicted errors and every kind of close were seen.
    assert {"INVALID_MESSAGE_FORMAT", "INVALID_ROOM", "WRONG_FRAME_TYPE", "UNKNOWN_TYPE"} <= set(report.errors)
    assert {1002, 1007, 1009} <= set(report.closes)
    assert node.worker_pid(0) == pid  # never crashed or restarted
    assert report.rss_after_bytes - report.rss_before_bytes < RSS_GROWTH_BOUND_BYTES
    await bystanders.assert_all_received()
    await bystanders.close()


async def test_fuzzing_with_auth_on_meets_forbidden_and_the_same_documented_answers(start_node):
    """Scopes are checked after decoding: the decoder's predictions still hold, and out-of-scope frames are FORBIDDEN."""
    node = start_node(1, *fuzz.WORKER_FLAGS, "--jwt-secret", flag(KEY1))
    pid = node.worker_pid(0)
    headers = bearer(token(sub="fuzzer", rooms=["fuzz", "fuzz:*"], publish=["fuzz:a"]))
    report = await fuzz.run(node.host, node.port, pid, 1500, seed=11, connections=2, upgrade_headers=headers)
    assert report.failures == 0, report.failure_samples
    assert report.errors.get("FORBIDDEN", 0) > 0
    assert node.worker_pid(0) == pid


def test_the_fuzz_command_with_auth_mints_a_token_per_connection_and_cleans_up(capsys):
    """`python -m chaos.fuzz --auth`: its own redis and node, tokens required, every reconnect with a fresh token."""
    environment_before = os.environ.get(fuzz.SECRETS_ENV)
    assert fuzz.main(["--frames", "600", "--seed", "5", "--connections", "2", "--auth", "--max-seconds", "600"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auth"] is True and report["worker_survived"] is True
    assert report["frames"] == 600 and report["failures"] == 0
    assert report["errors"].get("FORBIDDEN", 0) > 0 and report["reconnects"] > 2  # reconnected, and let in again
    assert os.environ.get(fuzz.SECRETS_ENV) == environment_before  # the throwaway key went to the node only


async def test_a_run_stops_at_its_time_bound_and_says_so(start_node):
    node = start_node(1, *fuzz.WORKER_FLAGS)
    report = await fuzz.run(node.host, node.port, node.worker_pid(0), 1000, connections=2, max_seconds=0)
    assert report.frames == 0 and report.failures == 1
    assert "--max-seconds" in report.failure_samples[0]
