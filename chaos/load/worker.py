"""One load-generator process: its share of the sockets, on its own uvloop event loop.

Owns, for the connections the coordinator (chaos/bench/cli.py) gave it: raising
its own file-descriptor limit, opening and joining them in a bounded ramp
(retrying refused upgrades with backoff), publishing at the planned rate
inside the planned time, settling (until every member has the room's final
position, or until quiet in arrival mode), and sending its tally back over a
pipe.
Two modes: a fixed population (`ConnectionPlan`s, some of which publish) and
arrival phases like the tutorial's Artillery test (virtual users arrive at a
rate, join a room, then loop: send, think). Either speaks ringcast's
protocol or the tutorial's server's (`ProcessPlan.dialect`, chaos/load/wire.py).
Every loop here is bounded in count and in time. It must not start servers or
judge results.
"""

from __future__ import annotations

import asyncio
import random
import resource
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from chaos.eventually import Timeout, eventually
from chaos.load.stats import Tally
from chaos.load.wire import PUBLISH_FRAMES, RINGCAST, SEED, SOCKETS, MemberSocket, UpgradeFailed, Window
from router.backoff import BackoffPolicy

PROGRESS_INTERVAL_S = 1.0
# A refused upgrade (503 accept rate, 429 per-IP) or a full backlog: retry 0.1-0.2 s, doubling to 2-4 s.
CONNECT_RETRY = BackoffPolicy(base_s=0.2, factor=2.0, cap_s=4.0, jitter=0.5)
USER_NUMBERS_PER_PROCESS = 10_000_000  # arrival mode: process i numbers its users from i x this (unique ids)
DEFAULT_PUBLISH_TICK_S = 0.01  # publishers are served in ticks: cheaper than one timer per publisher
SETTLE_QUIET_S = 1.0  # arrival mode: after publishing stops, wait until nothing arrived for this long...
SETTLE_MAX_S = 45.0  # ...but never longer than this (an overloaded run drains seconds of backlog); also the bound
# of each wait of the fixed population's settle (own publishes back; every member at the final position)


@dataclass(frozen=True)
class ConnectionPlan:
    host: str
    port: int
    path: str
    room: str
    source_ip: str
    sampled: bool  # decode and verify every frame of this connection
    publishes: bool
    number: int = 0  # the connection's number in the whole run: a publisher tags its messages with it


@dataclass(frozen=True)
class Target:
    """Where a room lives: the worker a virtual user of that room connects to (arrival mode)."""

    host: str
    port: int
    path: str
    room: str


@dataclass(frozen=True)
class ArrivalPlan:
    phases: list[tuple[float, float]]  # (duration_s, arrivals per second in THIS process)
    targets: list[Target]
    source_ips: list[str]
    first_think_s: float
    think_min_s: float
    think_max_s: float
    messages_per_user: int
    max_users: int  # this process never holds more virtual users than this at once
    sample_every: int


@dataclass(frozen=True)
class ProcessPlan:
    index: int
    connections: list[ConnectionPlan] = field(default_factory=list)
    publish_rate_per_s: float = 0.0  # per publisher
    publish_tick_s: float = DEFAULT_PUBLISH_TICK_S  # what a publisher owes is sent together once per tick
    arrival: ArrivalPlan | None = None
    connect_concurrency: int = 50  # joins read history through a small Redis pool on the worker: a gentler ramp is refused less
    connect_timeout_s: float = 15.0
    connect_attempts: int = 10
    ramp_timeout_s: float = 120.0
    dialect: str = RINGCAST  # the server's protocol: RINGCAST or SEED (the tutorial's server)


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one (20,000 here; it cannot go higher, hence several processes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run(plan: ProcessPlan, pipe: Connection) -> None:
    """Process entry point."""
    raise_fd_limit()
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works, slower
        pass
    asyncio.run(LoadProcess(plan, pipe).main())


class LoadProcess:
    def __init__(self, plan: ProcessPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.tally = Tally()
        self.window = Window()
        self.sockets: list[MemberSocket] = []
        self.commands: asyncio.Queue = asyncio.Queue()
        self._reported_latency: dict[int, int] = {}
        self.socket_class = SOCKETS[plan.dialect]
        self.publish_frame = PUBLISH_FRAMES[plan.dialect]

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        # a thread reads commands: add_reader would make the pipe non-blocking, and then a large
        # result could not be sent on it (EAGAIN)
        threading.Thread(target=self._read_commands, args=(loop,), daemon=True).start()
        progress = asyncio.create_task(self._progress())
        try:
            if self.plan.arrival is None:
                await self._fixed_population()
            else:
                await self._arrival_phases(self.plan.arrival)
        finally:
            progress.cancel()
            for sock in self.sockets:
                sock.close()
            await asyncio.sleep(0.2)  # let the close frames go out

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                command = self.pipe.recv()
            except (EOFError, OSError):  # the coordinator is gone: stop everything
                command = ("stop",)
            loop.call_soon_threadsafe(self.commands.put_nowait, command)
            if command[0] == "stop":
                return

    async def _command(self, timeout_s: float) -> tuple:
        try:
            return await asyncio.wait_for(self.commands.get(), timeout_s)
        except asyncio.TimeoutError:
            return ("stop",)

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            tally = self.tally
            delta = {b: c - self._reported_latency.get(b, 0) for b, c in tally.latency_all.items()
                     if c != self._reported_latency.get(b, 0)}
            self._reported_latency = dict(tally.latency_all)
            self.pipe.send(("progress", self.plan.index, tally.connected, tally.frames_total, tally.published, delta))

    # --- fixed population ------------------------------------------------
    async def _fixed_population(self) -> None:
        limit = asyncio.Semaphore(self.plan.connect_concurrency)

        async def one(plan: ConnectionPlan) -> None:
            async with limit:
                sock = await self._open(plan.host, plan.port, plan.path, plan.room, plan.source_ip, plan.sampled)
            if sock is not None:
                if plan.publishes:
                    sock.publisher_id = plan.number
                self.sockets.append(sock)

        ramp = asyncio.gather(*(one(p) for p in self.plan.connections))
        try:
            await asyncio.wait_for(ramp, self.plan.ramp_timeout_s)
        except asyncio.TimeoutError:
            pass
        self.pipe.send(("ready", self.plan.index, self.tally.connected, self.tally.connect_failures))
        command = await self._command(self.plan.ramp_timeout_s + 600)
        if command[0] != "go":
            self._send_result()
            return
        _, window_start_ns, window_end_ns, publish_end_ns = command
        self.window.start_ns, self.window.end_ns = window_start_ns, window_end_ns
        publishers = [s for s in self.sockets if s.publisher_id is not None]
        await self._publish(publishers, self.plan.publish_rate_per_s, publish_end_ns)
        await self._settle_fixed(publishers)
        self._send_result()

    async def _publish(self, publishers: list[MemberSocket], rate_per_s: float, end_ns: int) -> None:
        if not publishers or rate_per_s <= 0:
            await asyncio.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
            return
        start_ns = time.monotonic_ns()
        # each publisher starts at a random phase of its period, so sends spread over the tick
        offsets_s = [random.random() / rate_per_s for _ in publishers]
        sent = [0] * len(publishers)
        tally, window, frame = self.tally, self.window, self.publish_frame
        while True:
            now = time.monotonic_ns()
            if now >= end_ns:
                break
            elapsed_s = (now - start_ns) / 1e9
            for i, sock in enumerate(publishers):
                due = int((elapsed_s + offsets_s[i]) * rate_per_s)
                owed = due - sent[i]
                if owed <= 0 or sock.closed:
                    continue
                room, me = sock.room, sock.publisher_id
                sock.publish(b"".join(frame(room, now, sent[i] + k, me) for k in range(owed)), owed)
                sent[i] = due
                tally.published += owed
                if window.start_ns <= now < window.end_ns:
                    tally.published_in_window += owed
            await asyncio.sleep(self.plan.publish_tick_s)

    async def _settle_fixed(self, publishers: list[MemberSocket]) -> None:
        """Publishing is over: wait until every member has what was published to its room, then return.

        Exact, not "until quiet" (a starved machine can pause deliveries for
        longer than any quiet period): (1) wait until every publisher of this
        process got its own messages back (or refused), so the highest seq
        its sampled members saw is final for its rooms; (2) report those
        positions; the coordinator answers each room's final seq, the
        highest any process saw; (3) wait until every open member has
        received up to it. Each wait is bounded by SETTLE_MAX_S: what is
        still missing then is reported as lost.
        """
        async def own_messages_back() -> bool:  # async: read on the loop the sockets update it from
            return all(sock.own_messages_settled() for sock in publishers)

        try:
            await eventually(own_messages_back, what="every publisher's own messages back", timeout_s=SETTLE_MAX_S)
        except Timeout:
            pass  # a publish lost on its way: the members' counts will show it
        positions: dict[str, int] = {}
        if self.plan.dialect == SEED:  # no seq: a room's position is what its publishers sent (summed by the coordinator)
            for sock in publishers:
                positions[sock.room] = positions.get(sock.room, 0) + sock.sent
        else:  # the highest seq seen (the coordinator takes the highest over processes)
            for sock in self.sockets:
                if sock.sampled and sock.last_seq >= 0:
                    positions[sock.room] = max(positions.get(sock.room, 0), sock.last_seq)
        self.pipe.send(("positions", self.plan.index, positions))
        command = await self._command(SETTLE_MAX_S + 60)
        if command[0] != "expect":
            return
        final: dict[str, int] = command[1]

        async def every_member_at_final() -> bool:
            return all(sock.closed or sock.received >= final.get(sock.room, sock.join_seq) - sock.join_seq
                       for sock in self.sockets)

        try:
            await eventually(every_member_at_final, what="every member at its room's final position",
                             timeout_s=SETTLE_MAX_S)
        except Timeout:
            pass  # what is missing is the result's loss

    async def _settle(self) -> None:
        """Arrival mode (users come and go, no final position to wait for): until nothing arrived for a while."""
        deadline = time.monotonic() + SETTLE_MAX_S
        last = -1
        while time.monotonic() < deadline and last != self.tally.frames_total:
            last = self.tally.frames_total
            await asyncio.sleep(SETTLE_QUIET_S)

    def _send_result(self) -> None:
        members = [(s.room, s.join_seq, s.received, s.sampled, s.last_seq) for s in self.sockets]
        self.pipe.send(("result", self.plan.index, self.tally.as_dict(), members))

    async def _open(self, host: str, port: int, path: str, room: str, source_ip: str, sampled: bool,
                    late_join: bool = False) -> MemberSocket | None:
        loop = asyncio.get_running_loop()
        for attempt in range(self.plan.connect_attempts):
            sock = self.socket_class(host, port, path, room, sampled, self.tally, self.window, late_join)
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: sock, host, port, local_addr=(source_ip, 0)),
                    self.plan.connect_timeout_s)
                await asyncio.wait_for(asyncio.shield(sock.joined), self.plan.connect_timeout_s)
                return sock
            except (OSError, ConnectionError, UpgradeFailed, asyncio.TimeoutError):
                sock.close()
                await asyncio.sleep(CONNECT_RETRY.delay_s(attempt))
        self.tally.connect_failures += 1
        return None

    # --- arrival phases (the tutorial's Artillery scenario) --------------
    async def _arrival_phases(self, plan: ArrivalPlan) -> None:
        self.pipe.send(("ready", self.plan.index, 0, 0))
        command = await self._command(600)
        if command[0] != "go":
            self._send_result()
            return
        _, window_start_ns, window_end_ns, end_ns = command
        self.window.start_ns, self.window.end_ns = window_start_ns, window_end_ns
        users: set[asyncio.Task] = set()
        number = self.plan.index * USER_NUMBERS_PER_PROCESS  # the user's id in its messages: unique in the run
        for duration_s, rate_per_s in plan.phases:
            phase_end = time.monotonic() + duration_s
            interval_s = 1.0 / rate_per_s if rate_per_s > 0 else duration_s
            next_at = time.monotonic()
            while time.monotonic() < phase_end and time.monotonic_ns() < end_ns:
                if len(users) < plan.max_users:
                    target = random.choice(plan.targets)
                    task = asyncio.create_task(self._virtual_user(plan, target, number, end_ns))
                    users.add(task)
                    task.add_done_callback(users.discard)
                    number += 1
                next_at += interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        # the last users finish their loops, bounded by the run's end
        remaining_s = max(0.0, (end_ns - time.monotonic_ns()) / 1e9)
        if users:
            await asyncio.wait(set(users), timeout=remaining_s + 5)
        for task in users:
            task.cancel()
        await self._settle()
        self._send_result()

    async def _virtual_user(self, plan: ArrivalPlan, target: Target, number: int, end_ns: int) -> None:
        source_ip = plan.source_ips[number % len(plan.source_ips)]
        sock = await self._open(target.host, target.port, target.path, target.room, source_ip,
                                number % plan.sample_every == 0, late_join=True)
        if sock is None:
            return
        self.sockets.append(sock)
        await asyncio.sleep(plan.first_think_s)
        tally, window = self.tally, self.window
        for k in range(plan.messages_per_user):
            now = time.monotonic_ns()
            if now >= end_ns or sock.closed:
                break
            sock.publish(self.publish_frame(target.room, now, k, number), 1)
            tally.published += 1
            if window.start_ns <= now < window.end_ns:
                tally.published_in_window += 1
            await asyncio.sleep(random.uniform(plan.think_min_s, plan.think_max_s))
        # the user leaves: its socket stays counted in the result, closed
        sock.close()
        tally.connected -= 1

