"""A small WebSocket test client speaking the ringcast protocol (JSON or msgpack).

Owns the boilerplate every integration test needs: connect, read the welcome,
send a frame, wait for the next frame of a given type. Shared; never copy it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgpack
import orjson


class WsClient:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, codec: str) -> None:
        self.session = session
        self.ws = ws
        self.codec = codec
        self.welcome: dict[str, Any] = {}
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, codec: str = "json", **kwargs: Any) -> "WsClient":
        session = aiohttp.ClientSession()
        protocols = ("ringcast.msgpack",) if codec == "msgpack" else ()
        try:
            ws = await session.ws_connect(url, protocols=protocols, autoping=True, max_msg_size=0, **kwargs)
        except BaseException:
            await session.close()
            raise
        client = cls(session, ws, codec)
        client.welcome = await client.expect("welcome")
        return client

    async def send(self, frame: dict[str, Any]) -> None:
        if self.codec == "msgpack":
            await self.ws.send_bytes(msgpack.packb(frame))
        else:
            await self.ws.send_str(orjson.dumps(frame).decode())

    async def recv(self, timeout_s: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout_s)
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame = orjson.loads(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            frame = msgpack.unpackb(msg.data)
        else:
            raise ConnectionError(f"socket closed: {msg.type.name} code={self.ws.close_code} data={msg.data!r}")
        self.seen.append(frame)
        return frame

    async def expect(self, kind: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The next frame of type `kind`, skipping others (kept in `seen`)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no {kind!r} frame within {timeout_s}s; seen {self.seen[-5:]}")
            frame = await self.recv(left)
            if frame.get("type") == kind:
                return frame

    async def expect_any(self, kinds: tuple[str, ...], timeout_s: float = 5.0) -> dict[str, Any]:
        """The next frame whose type is one of `kinds`, skipping others."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no frame of {kinds} within {timeout_s}s; seen {self.seen[-5:]}")
            frame = await self.recv(left)
            if frame.get("type") in kinds:
                return frame

    async def join(self, room: str) -> dict[str, Any]:
        await self.send({"type": "join", "room": room})
        return await self.expect("joined")

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
