"""The complete app of docs/sdk.md (examples/chat_app.py) runs against a real cluster.

A 2-worker node with auth, an API key, presence and join/leave events on
`chat:*`, a route service in front, and the example run as its own process
with the cluster's secrets in its environment: both clients receive the
backend's HTTP publish and each other's message, presence lists both users,
history has both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIGNING_KEY = "app=example-signing-key-0123456789abcdef"
API_KEY = "backend=example-api-key-0123456789abcdefghij"
RUN_TIMEOUT_S = 60  # the example itself gives up on messages after 10 s


def test_the_complete_app_of_the_sdk_docs_runs(start_node, start_router):
    node = start_node(2, "--jwt-secret", SIGNING_KEY, "--api-key", API_KEY, "--presence-rule", "chat:*",
                      "--presence-events-rule", "chat:*")  # as `ringcast up` runs it: diffs mixed with messages
    router = start_router("--nodes", ",".join(f"127.0.0.1:{port}" for port in node.ports))
    env = dict(os.environ, RINGCAST_JWT_SECRETS=SIGNING_KEY, RINGCAST_API_KEYS=API_KEY)
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "chat_app.py"), "--router", router.url("")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "presence  chat:lobby: ['alice', 'bob']" in out
    for user in ("alice", "bob"):
        assert f"{user} got #1 from api:backend: welcome, everyone" in out
        assert f"{user} got #2 from alice: hi bob" in out
    assert "history   ['welcome, everyone', 'hi bob']" in out
