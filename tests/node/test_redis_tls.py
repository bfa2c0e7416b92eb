"""Every ringcast process on a TLS Redis (`rediss://`) with a client certificate and a password file.

Real redis-server with `--tls-port` and `--tls-auth-clients yes`, certificates
made here with `openssl` (chaos/redis_topologies.py); real node (2 workers),
router and control plane. The password reaches no process's command line and
no log; a wrong CA or a certificate for another name is refused with a clear
error, and the hostname check can be turned off.
"""

from __future__ import annotations

import asyncio
import os
import sys

import psutil
import pytest

from chaos.cluster import ControlProcess, NodeProcess, RedisServer, RouterProcess, free_port, free_port_range, http_json
from chaos.eventually import eventually
from chaos.redis_topologies import make_tls_files
from tests.wsclient import WsClient

PASSWORD = "tls-secret-5d1e0b77"
NODE_FLAGS = ("--bus", "redis", "--placement-hint", "off", "--log-level", "info")


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture
def tls_redis(tls_material):
    server = RedisServer(port=free_port(), password=PASSWORD, tls=tls_material.files).start()
    try:
        yield server
    finally:
        server.stop()


def tls_flags(ca_file: str, files) -> list[str]:
    return ["--redis-tls-ca-file", ca_file, "--redis-tls-cert-file", files.client_cert_file,
            "--redis-tls-key-file", files.client_key_file]


def launch_node(started: list, workers: int, args: list[str]) -> NodeProcess:
    """A node started without waiting for /readyz (a worker with no bus is not ready: /readyz 503, busConnected false)."""
    node = NodeProcess(port=free_port_range(workers), workers=workers, args=args)
    started.append(node)
    node._launch("node", [sys.executable, "-m", "ringcast_cli", "node", "--host", node.host, "--port", str(node.port),
                          "--workers", str(workers), *args])
    return node


def bus_connected(node: NodeProcess, index: int) -> bool | None:
    """The worker's /healthz `busConnected`; None while it does not listen yet (the bus starts before the port)."""
    try:
        return http_json(node.http_url(index, "/healthz"))[1].get("busConnected")
    except OSError:
        return None  # not listening yet


async def test_node_router_and_control_on_tls_redis_with_a_password_file(tls_redis, tls_material, tmp_path, started):
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    files = tls_material.files
    shared = ["--redis", tls_redis.bare_url, "--redis-password-file", str(password_file), *tls_flags(files.ca_file, files)]
    assert tls_redis.bare_url.startswith("rediss://") and PASSWORD not in tls_redis.bare_url

    node = NodeProcess(port=free_port_range(2), workers=2, args=[*shared, *NODE_FLAGS])
    started.append(node)
    node.start()
    router = RouterProcess(port=free_port(), args=[*shared, "--nodes", f"127.0.0.1:{node.port},127.0.0.1:{node.port + 1}"])
    started.append(router)
    router.start()
    control = ControlProcess(port=free_port(), redis_url=tls_redis.bare_url, admin_token="tls-admin-token",
                             args=shared[2:])
    started.append(control)
    control.start()

    # Each service reached the TLS Redis with the password from the file.
    await eventually(lambda: all(bus_connected(node, i) for i in range(2)), what="both workers' bus on TLS Redis")
    await eventually(lambda: tls_redis.command("HLEN", "ringcast:nodes:heartbeat").strip() == b"2",
                     what="both workers' heartbeats in the TLS Redis")
    await eventually(lambda: http_json(router.url("/healthz"))[1].get("redisReachable") is True,
                     what="the router reading the ring from the TLS Redis")
    await eventually(lambda: control.get("/healthz")[1].get("redisConnected") is True,
                     what="the control plane on the TLS Redis")
    await eventually(lambda: tls_redis.command("HLEN", "ringcast:routers").strip() == b"1",
                     what="the router's presence entry in the TLS Redis")

    # A message crosses workers: it went through the TLS Redis.
    reader = await WsClient.connect(node.ws_url(0))
    publisher = await WsClient.connect(node.ws_url(1))
    await reader.join("chat:tls")
    await publisher.join("chat:tls")
    await publisher.send({"type": "message", "room": "chat:tls", "data": {"over": "tls"}, "id": 1})
    assert (await publisher.expect("ack"))["seq"] == 1
    assert (await reader.expect("message"))["data"] == {"over": "tls"}
    await reader.close()
    await publisher.close()

    # The password is in no process's command line, and in no log any of them wrote.
    assert node.proc is not None and router.proc is not None and control.proc is not None
    processes = [psutil.Process(node.proc.pid), *(psutil.Process(node.worker_pid(i)) for i in range(2)),
                 psutil.Process(router.proc.pid), psutil.Process(control.proc.pid)]
    for process in processes:
        with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
            assert PASSWORD.encode() not in handle.read(), process.cmdline()
    for service in (node, router, control):
        with open(service.log_path) as handle:
            written = handle.read()
        assert written and PASSWORD not in written


async def test_a_server_signed_by_another_ca_is_refused_with_a_clear_error(tls_redis, tls_material, started):
    files = tls_material.files
    node = launch_node(started, 1, ["--redis", tls_redis.url, *tls_flags(tls_material.unrelated_ca_file, files),
                                    *NODE_FLAGS])
    await eventually(lambda: "TLS with Redis 127.0.0.1" in node.log() and "certificate verify failed" in node.log(),
                     what="the worker to say why TLS failed")
    await eventually(lambda: bus_connected(node, 0) is False, what="the worker to answer, its bus not connected")
    assert node.metric(0, "ringcast_bus_connected") == 0.0
    assert http_json(node.http_url(0, "/readyz"))[0] == 503  # not ready: a proxy sends it no clients
    assert PASSWORD not in node.log()  # the URL carried it inline here: still never logged


@pytest.mark.parametrize("check_hostname", [True, False])
async def test_the_hostname_is_checked_unless_turned_off(tls_material, started, check_hostname):
    files = tls_material.with_server(tls_material.other_name_cert_file, tls_material.other_name_key_file)
    server = RedisServer(port=free_port(), tls=files).start()  # its certificate names other.invalid, not 127.0.0.1
    try:
        flags = ["--redis", server.url, *tls_flags(files.ca_file, files), *NODE_FLAGS]
        if not check_hostname:
            flags.append("--no-redis-tls-check-hostname")
        node = launch_node(started, 1, flags)
        if check_hostname:
            await eventually(lambda: "TLS with Redis" in node.log() and "127.0.0.1" in node.log()
                             and "mismatch" in node.log(), what="the hostname check to refuse other.invalid")
            await eventually(lambda: bus_connected(node, 0) is False, what="the worker to answer, its bus not connected")
        else:
            await eventually(lambda: bus_connected(node, 0) is True, what="the bus connected without a hostname check")
            assert "TLS with Redis" not in node.log()
    finally:
        for process in started:
            process.stop()
        started.clear()
        await asyncio.to_thread(server.stop)


async def test_rediss_options_on_a_plain_url_stop_the_node_at_startup(tls_material, started):
    files = tls_material.files
    node = launch_node(started, 1, ["--redis", "redis://127.0.0.1:1/0", *tls_flags(files.ca_file, files), *NODE_FLAGS])
    assert node.proc is not None
    assert await asyncio.to_thread(node.proc.wait, 30) == 2
    assert "is plain TCP: use rediss://" in node.log()
    assert os.path.exists(files.ca_file)
