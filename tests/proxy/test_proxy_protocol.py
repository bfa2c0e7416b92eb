"""node.proxy_protocol: the v2 header parser, and the listener in front of a real aiohttp app, fed by raw
sockets and by Debian's HAProxy in TCP mode (`send-proxy-v2`)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from pathlib import Path

import pytest
from aiohttp import web

from chaos.cluster import free_port
from node.client_address import parse_trusted_proxies
from node.proxy_protocol import MAX_HEADER_BYTES, SIGNATURE, ProxyProtocolError, listen, parse


def header(source: str = "203.0.113.5", port: int = 4711, *, command: int = 1, family: int | None = None,
           transport: int = 1, tlvs: bytes = b"", version: int = 2, block: bytes | None = None) -> bytes:
    address = ipaddress.ip_address(source)
    if family is None:
        family = 1 if address.version == 4 else 2
    if block is None:
        destination = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
        block = address.packed + destination.packed + struct.pack("!HH", port, 8700)
    block += tlvs
    return SIGNATURE + bytes([(version << 4) | command, (family << 4) | transport]) + struct.pack("!H", len(block)) + block


# --- the parser -----------------------------------------------------------------------------


def test_ipv4_and_ipv6_headers():
    data = header("203.0.113.5", 4711) + b"GET / HTTP/1.1\r\n"
    parsed = parse(data)
    assert parsed.source == ("203.0.113.5", 4711) and data[parsed.length:] == b"GET / HTTP/1.1\r\n"
    parsed = parse(header("2001:db8::7", 80))
    assert parsed.source == ("2001:db8::7", 80) and parsed.length == 16 + 36


def test_tlvs_are_skipped():
    tlvs = bytes([0x20, 0, 5, 1, 0, 0, 0, 0]) + bytes([0x05, 0, 3]) + b"abc"
    data = header(tlvs=tlvs) + b"rest"
    parsed = parse(data)
    assert parsed.source == ("203.0.113.5", 4711) and data[parsed.length:] == b"rest"


def test_local_unspec_and_unix_keep_the_peer():
    assert parse(header(command=0)).source is None
    assert parse(header(family=0, block=b"")).source is None
    assert parse(header(family=3, block=b"\0" * 216)).source is None


def test_partial_headers_need_more_bytes():
    data = header()
    for cut in range(len(data)):
        assert parse(data[:cut]) is None
    assert parse(data) is not None


@pytest.mark.parametrize("data, message", [
    (b"GET / HTTP/1.1\r\n", "signature"),
    (b"PROXY TCP4 203.0.113.5 127.0.0.1 4711 8700\r\n", "signature"),  # version 1 is not accepted
    (b"\r\n\r\n\x00\r\nQUIX\n", "signature"),
    (header(version=1), "version 1"),
    (header(command=2), "command"),
    (header(family=5), "family"),
    (header(transport=2), "not a stream"),
    (header(family=2), "too short"),  # an IPv4 block announced as IPv6
    (header(block=b"\1\2\3"), "too short"),
    (SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", MAX_HEADER_BYTES), "at most"),
])
def test_what_is_not_a_v2_header_is_refused(data, message):
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data)


# --- the listener in front of aiohttp ----------------------------------------------------------


async def remote_app(port: int, trusted: str, header_timeout_s: float = 2.0):
    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.remote}")

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    server = await listen(runner.server, "127.0.0.1", port, trusted=parse_trusted_proxies([trusted]),
                          header_timeout_s=header_timeout_s)
    return runner, server


async def exchange(port: int, *chunks: bytes, source: str = "127.0.0.1", pause_s: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


REQUEST = b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def test_a_trusted_peer_names_the_client_and_others_are_served_as_they_are():
    port = free_port()
    runner, server = await remote_app(port, "127.0.0.1")
    try:
        answer = await exchange(port, header("203.0.113.5") + REQUEST)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"203.0.113.5")
        answer = await exchange(port, header("2001:db8::9") + REQUEST)
        assert answer.endswith(b"2001:db8::9")
        # byte by byte, the request in the same packets as the header's end
        data = header("198.51.100.4") + REQUEST
        answer = await exchange(port, *[data[i:i + 1] for i in range(len(data))])
        assert answer.endswith(b"198.51.100.4")
        # LOCAL (the proxy's health check): the proxy itself is the peer
        assert (await exchange(port, header(command=0) + REQUEST)).endswith(b"127.0.0.1")
        # An untrusted peer: no header expected, its own address; a header it sends is bad HTTP
        assert (await exchange(port, REQUEST, source="127.0.0.2")).endswith(b"127.0.0.2")
        answer = await exchange(port, header("203.0.113.5") + REQUEST, source="127.0.0.2")
        assert answer.split(b" ", 2)[1] == b"400"
    finally:
        server.close()
        await runner.cleanup()


async def test_a_trusted_peer_without_a_valid_header_is_cut_without_an_answer():
    port = free_port()
    runner, server = await remote_app(port, "127.0.0.1", header_timeout_s=0.5)
    try:
        assert await exchange(port, REQUEST) == b""  # plain HTTP from the proxy: it must send the header
        assert await exchange(port, header(version=1) + REQUEST) == b""
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await exchange(port, SIGNATURE[:5], pause_s=0.0) == b""  # never finished: cut at the deadline
        assert loop.time() - started >= 0.4  # not before the deadline (no upper bound: the machine may be slow)
    finally:
        server.close()
        await runner.cleanup()


async def test_haproxy_send_proxy_v2_in_tcp_mode_gives_the_client_address(start_haproxy, tmp_path: Path):
    app_port, proxy_port = free_port(), free_port()
    runner, server = await remote_app(app_port, "127.0.0.1")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n"
        f"frontend passthrough\n    bind 127.0.0.1:{proxy_port}\n    default_backend app\n\n"
        f"backend app\n    server app 127.0.0.1:{app_port} send-proxy-v2\n"
    )
    try:
        await asyncio.to_thread(start_haproxy, cfg, proxy_port)
        for source in ("127.0.0.2", "127.0.0.3"):
            answer = await exchange(proxy_port, REQUEST, source=source)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(source.encode()), answer
    finally:
        server.close()
        await runner.cleanup()



async def test_a_worker_behind_haproxy_send_proxy_v2_counts_real_clients(start_haproxy, tmp_path: Path):
    """--proxy-protocol: the worker's own listener (`Worker.listen`, what `Worker.run` opens) behind HAProxy
    passing the TCP stream through (TLS passthrough; here plain TCP) with send-proxy-v2; per-IP caps count the
    real clients."""
    from node.bus_memory import MemoryBus
    from node.config import NodeConfig
    from node.worker import Worker
    from tests.proxy.clients import connect, upgrade_refusal

    app_port, proxy_port = free_port(), free_port()
    config = NodeConfig(host="127.0.0.1", port=app_port, workers=1, bus="memory", max_connections_per_ip=2,
                        trusted_proxies=["127.0.0.1"], proxy_protocol=True, control_heartbeat_interval_s=0)
    config.validate()
    worker = Worker(config, MemoryBus())
    runner = web.AppRunner(worker.app(), access_log=None, handle_signals=False)
    await runner.setup()
    stop_listening = await worker.listen(runner)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n"
        f"frontend passthrough\n    bind 127.0.0.1:{proxy_port}\n    default_backend worker\n\n"
        f"backend worker\n    server w 127.0.0.1:{app_port} send-proxy-v2\n"
    )
    url = f"ws://127.0.0.1:{proxy_port}/ws"
    clients = []
    try:
        await asyncio.to_thread(start_haproxy, cfg, proxy_port)
        clients += [await connect(url, source_ip="127.0.0.2"), await connect(url, source_ip="127.0.0.2")]
        status, body = await upgrade_refusal(url, source_ip="127.0.0.2")
        assert (status, body.get("error")) == (429, "TOO_MANY_CONNECTIONS_FROM_IP")
        clients.append(await connect(url, source_ip="127.0.0.3"))
        await clients[0].join("pp-room")
        await clients[2].join("pp-room")
        await clients[2].send({"type": "message", "room": "pp-room", "text": "through the TCP proxy"})
        assert (await clients[0].expect("message"))["text"] == "through the TCP proxy"
        assert sorted(conn.ip for conn in worker.connections.values()) == ["127.0.0.2", "127.0.0.2", "127.0.0.3"]
    finally:
        for client in clients:
            await client.close()
        stop_listening()
        await runner.cleanup()
