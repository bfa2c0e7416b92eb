"""Clients of the proxy tests: from a chosen loopback source address, over wss:// (trusting the test's
certificate) or ws://, as a ringcast client or as one raw upgrade request whose refusal is read."""

from __future__ import annotations

import base64
import os
import ssl

import aiohttp

from tests.wsclient import WsClient


def tls_context(proxy_cert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy_cert.ca_file))


def session_from(source_ip: str | None = None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0) if source_ip else None, force_close=True)
    return aiohttp.ClientSession(connector=connector)


async def connect(url: str, proxy_cert=None, source_ip: str | None = None, headers: dict | None = None) -> WsClient:
    """A ringcast client from `source_ip`, over wss:// when `proxy_cert` is given."""
    session = session_from(source_ip)
    try:
        ws = await session.ws_connect(url, ssl=tls_context(proxy_cert) if proxy_cert else True,
                                      headers=headers or {}, max_msg_size=0)
    except BaseException:
        await session.close()
        raise
    client = WsClient(session, ws, "json")
    client.welcome = await client.expect("welcome")
    return client


async def upgrade_refusal(url: str, proxy_cert=None, source_ip: str | None = None,
                          headers: dict | None = None) -> tuple[int, dict]:
    """Send an upgrade request and return the HTTP answer (status, JSON body) of a refusal."""
    http_url = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **(headers or {})}
    async with session_from(source_ip) as session:
        async with session.get(http_url, headers=upgrade,
                               ssl=tls_context(proxy_cert) if proxy_cert else True) as response:
            if response.status == 101:
                return 101, {}
            return response.status, await response.json(content_type=None)
