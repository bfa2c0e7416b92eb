"""Well-behaved clients that keep talking while a test attacks their worker.

Owns the proof every abuse test gives: a publisher and a listener in one room
on the attacked worker; every message the publisher sends during the attack
must reach the listener, in order. No latency is asserted (machines are
noisy); only that nothing is lost. Shared by tests/security/*; never copy it.
"""

from __future__ import annotations

from tests.wsclient import WsClient


class Bystanders:
    def __init__(self, publisher: WsClient, listener: WsClient, room: str) -> None:
        self.publisher = publisher
        self.listener = listener
        self.room = room
        self.sent: list[str] = []

    @classmethod
    async def join(cls, url: str, room: str = "bystanders", headers: dict | None = None) -> "Bystanders":
        publisher = await WsClient.connect(url, headers=headers or {})
        listener = await WsClient.connect(url, headers=headers or {})
        await publisher.join(room)
        await listener.join(room)
        return cls(publisher, listener, room)

    async def publish(self) -> None:
        text = f"bystander-{len(self.sent)}"
        self.sent.append(text)
        await self.publisher.send({"type": "message", "room": self.room, "text": text})

    async def assert_all_received(self, timeout_s: float = 20.0) -> None:
        received = [(await self.listener.expect("message", timeout_s))["text"] for _ in self.sent]
        assert received == self.sent

    async def close(self) -> None:
        await self.publisher.close()
        await self.listener.close()
