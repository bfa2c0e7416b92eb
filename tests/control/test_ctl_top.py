"""`ringcast ctl top` against real workers, a real control plane and real traffic.

It runs as an operator runs it (a subprocess): `--once` and `--iterations 2` must list every
worker with its state and, while clients publish, a non-zero deliveries/s; a killed worker
must show as unreachable, not crash the view. Every wait is `eventually`: a rate needs two
samples with traffic between them, so the test asks again until it sees one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from chaos.cluster import REPO
from chaos.eventually import eventually
from tests.control.helpers import wait_ring
from tests.wsclient import WsClient

ROOM = "top-room"


async def top(control_url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ringcast_cli", "ctl", "--url", control_url, "top", "--interval", "0.5", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(), err.decode()


def rows(output: str) -> dict[str, list[str]]:
    """Worker id -> its cells: WORKER HEALTH STATE RING CONNS ROOMS DELIV/S P99 CPU% RSS."""
    return {line.split()[0]: line.split() for line in output.splitlines() if line.startswith("127.0.0.1:")}


def delivering(cells: list[str]) -> bool:
    return cells[6] not in ("-", "0.0", "unreachable")


@contextlib.asynccontextmanager
async def traffic(urls: list[str]):
    """A member of ROOM on every worker (each reading what it gets) and a publisher sending to it."""
    clients = [await WsClient.connect(url) for url in urls]
    for client in clients:
        await client.join(ROOM)

    async def drain(client: WsClient) -> None:
        async for _ in client.ws:
            pass

    async def publish() -> None:
        while True:
            await clients[0].send({"type": "message", "room": ROOM, "text": "tick"})
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(drain(client)) for client in clients] + [asyncio.create_task(publish())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()


async def test_top_lists_every_worker_its_state_and_live_deliveries(start_node, start_control):
    node = start_node(2, "--restart-backoff-base-s", "60")  # a killed worker stays down for the test
    control = start_control()
    await wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    workers = [f"127.0.0.1:{port}" for port in node.ports]

    async with traffic([node.ws_url(0), node.ws_url(1)]):
        async def snapshot_with_deliveries(*args: str):
            code, out, err = await top(control.url, *args)
            assert code == 0, err
            seen = rows(out)
            return out if all(w in seen and delivering(seen[w]) for w in workers) else None

        once = await eventually(lambda: snapshot_with_deliveries("--once"), timeout_s=60,
                                what="top --once to show deliveries on every worker")
        live = await eventually(lambda: snapshot_with_deliveries("--iterations", "2"), timeout_s=60,
                                what="top --iterations 2 to show deliveries on every worker")
    for out in (once, live):
        assert "ring epoch" in out and "leader" in out
        for worker in workers:
            assert rows(out)[worker][1:3] == ["alive", "active"]

    os.kill(node.worker_pid(1), signal.SIGKILL)

    async def shows_the_dead_worker_unreachable():
        code, out, err = await top(control.url, "--once")
        assert code == 0, err
        seen = rows(out)
        return out if seen.get(workers[1], [""] * 7)[6] == "unreachable" and workers[0] in seen else None

    out = await eventually(shows_the_dead_worker_unreachable, timeout_s=30,
                           what="top to show the killed worker as unreachable")
    assert rows(out)[workers[0]][6] != "unreachable"
    assert f"{workers[1]}: " in out  # the footer says why


async def test_top_against_no_control_plane_exits_1_once_and_usage_errors_exit_2():
    code, _, err = await top("http://127.0.0.1:9", "--once")
    assert code == 1 and "cannot reach the control plane" in err
    code, _, _ = await top("http://127.0.0.1:9", "--iterations", "-1")
    assert code == 2
