"""Steering pace: spread over the window, never faster than the rate cap, every connection once."""

import asyncio

from node import steering
from node.steering import SteeringProgress, pace_s, steer_away


class StubConnection:
    """Only what steer_away reads: whether the socket is closed (no socket is involved)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.closed = False


def test_pace_is_the_window_spread_slowed_to_the_rate_cap():
    assert pace_s(100, 10.0, None) == 0.1
    assert pace_s(100, 1.0, 50.0) == 0.02  # the window would allow 100/s; the cap says 50/s
    assert pace_s(10, 5.0, 1000.0) == 0.5
    assert pace_s(0, 5.0, 10.0) == 0.1


async def test_every_open_connection_gets_one_notice_with_its_target_and_bounded_jitter(monkeypatch):
    clock = [1000.0]  # a fake loop clock that only the fake sleep advances: the schedule is exact
    sent_at: list[float] = []

    async def fake_sleep(delay: float) -> None:
        clock[0] += delay

    monkeypatch.setattr(steering.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: clock[0])
    conns = [StubConnection(i) for i in range(20)]
    conns[3].closed = True
    sent: list[tuple[int, dict]] = []

    def notify(conn, frame) -> None:
        sent.append((conn.index, frame))
        sent_at.append(clock[0] - 1000.0)

    progress = await steer_away(
        conns, reason="drain", window_s=0.2, max_rate_per_s=50.0, jitter_ms=300,
        target_url=lambda conn: f"ws://owner-{conn.index % 2}/ws", notify=notify, progress=SteeringProgress("drain"),
    )
    assert sorted(index for index, _ in sent) == [i for i in range(20) if i != 3]
    for index, frame in sent:
        assert frame["type"] == "reconnect" and frame["reason"] == "drain"
        assert frame["url"] == f"ws://owner-{index % 2}/ws" and 0 <= frame["delayMs"] <= 300
    assert progress.total == 20 and progress.steered == 20 and progress.to_dict()["done"] is True
    # 20 slots 20 ms apart (the 50/s cap beats the 0.2 s window); the closed one's slot stays empty.
    slots = [round(t / 0.02, 6) for t in sent_at]
    assert all(slot == int(slot) for slot in slots)
    assert len(set(slots)) == 19 and set(slots) <= set(range(20))
