"""`ringcast ctl` follows a 409 NOT_LEADER only to a control replica the operator named, and only once.

The leader's URL in a 409 comes from Redis (the lease record): whoever can
write that key could name their own server and collect the admin token. The
fake servers here are aiohttp apps on 127.0.0.1 that record every request.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

from chaos.cluster import REPO
from common.keys import Keys
from tests.conftest import ADMIN_TOKEN


class RecordingServer:
    """An HTTP server on 127.0.0.1 that records every request and answers with `answer(self)`."""

    def __init__(self, answer=None) -> None:
        self.requests: list[dict] = []
        self.answer = answer or (lambda server: web.json_response({"ok": True}))
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"method": request.method, "path": request.path,
                              "authorization": request.headers.get("Authorization")})
        return self.answer(self)

    async def start(self) -> "RecordingServer":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def ctl(*args: str) -> tuple[int, str, str]:
    """Run `ringcast ctl` as an operator would, without blocking the loop the fake servers run on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ringcast_cli", "ctl", "--token", ADMIN_TOKEN, *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


async def test_a_leader_record_naming_an_unknown_url_never_receives_the_token(redis_server, start_control):
    stranger = await RecordingServer().start()
    try:
        # Someone with write access to Redis names their own server as the leader, for longer than the test.
        record = json.dumps({"id": "evil", "url": stranger.url, "nonce": "x"})
        redis_server.command("SET", Keys().leader, record, "PX", "600000")
        follower = start_control()
        assert not follower.is_leader()

        code, _, err = await ctl("--url", follower.url, "drain", "127.0.0.1:8700")
        assert code == 1
        assert "NOT_LEADER" in err and stranger.url in err and "--url" in err
        assert stranger.requests == []  # neither the request nor the token went there

        code, _, err = await ctl("--url", follower.url, "remove", "127.0.0.1:8700")
        assert code == 1 and stranger.requests == []
    finally:
        await stranger.stop()


async def test_a_known_replica_is_followed_once_and_not_further(redis_server):
    def not_leader(points_to):
        def answer(server):
            leader = {"id": "other", "url": points_to()}
            return web.json_response({"error": "NOT_LEADER", "message": "not me", "leader": leader}, status=409)
        return answer

    first = await RecordingServer().start()
    second = await RecordingServer().start()
    third = await RecordingServer().start()
    first.answer = not_leader(lambda: second.url)  # known: followed
    second.answer = not_leader(lambda: third.url)  # known too, but a second hop is never made
    try:
        code, _, err = await ctl("--url", first.url, "--url", second.url, "--url", third.url, "rebalance")
        assert code == 1 and "NOT_LEADER" in err
        assert [r["authorization"] for r in first.requests] == [f"Bearer {ADMIN_TOKEN}"]
        assert [r["authorization"] for r in second.requests] == [f"Bearer {ADMIN_TOKEN}"]
        assert third.requests == []
    finally:
        for server in (first, second, third):
            await server.stop()


async def test_reads_go_to_the_next_replica_when_the_first_cannot_be_reached():
    # A port nothing listens on (bound, never listened: connects are refused), then a replica that answers.
    import socket
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    ring = {"epoch": 4, "members": []}
    second = await RecordingServer(lambda server: web.json_response(ring)).start()
    try:
        code, out, err = await ctl("--url", dead_url, "--url", second.url, "--json", "ring")
        assert code == 0, err
        assert json.loads(out) == ring
        assert second.requests == [{"method": "GET", "path": "/v1/ring", "authorization": None}]  # no token on reads
        # An HTTP error is an answer, not an unreachable replica: the next one is not asked.
        second.answer = lambda server: web.json_response({"error": "INTERNAL", "message": "boom"}, status=500)
        third = await RecordingServer(lambda server: web.json_response(ring)).start()
        try:
            code, _, err = await ctl("--url", second.url, "--url", third.url, "ring")
            assert code == 1 and "500" in err and third.requests == []
        finally:
            await third.stop()
        # Every replica unreachable: exit 1, naming each.
        code, _, err = await ctl("--url", dead_url, "ring")
        assert code == 1 and dead_url in err
    finally:
        dead.close()
        await second.stop()
