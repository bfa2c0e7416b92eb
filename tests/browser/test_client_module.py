"""clients/js/ringcast.js's pure parts, run in the same real Chromium: the backoff schedule, the
token helpers, and its protocol core (`ClientCore`) replayed frame by frame against the Python
SDK's core (router/client_core.py) on the same scripts: same events, same frames to send.
Also the route service's static files: what /demo/ and /clients/ringcast.js serve, and nothing else."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from chaos.cluster import RouterProcess, free_port
from router import client_core
from router.backoff import BackoffPolicy
from router.demo import FILES

REPO = Path(__file__).resolve().parents[2]
W0, W1, W2 = "ws://127.0.0.1:7000/ws", "ws://127.0.0.1:7001/ws", "ws://10.9.9.9:7002/ws"


def msg(room: str, seq: int, epoch: str = "e1") -> dict:
    return {"type": "message", "room": room, "seq": seq, "epoch": epoch, "text": f"{room}-{seq}"}


# Each step: ["join", room] | ["open", url] | ["recv", frame] | ["lost"] | ["route", epoch] | ["unreachable", url]
#   | ["presence", room, stats]
SCRIPTS: dict[str, list[list[Any]]] = {
    "resume, duplicates and a repaired gap": [
        ["join", "b"], ["join", "a"], ["open", W0], ["recv", {"type": "welcome", "workerId": "w0"}],
        ["recv", {"type": "joined", "room": "a", "seq": 2, "epoch": "e1", "id": 1}],
        ["recv", {"type": "joined", "room": "b", "seq": 0, "epoch": "", "id": 2}],
        ["recv", msg("a", 3)], ["recv", msg("a", 3)], ["recv", msg("a", 2)], ["recv", msg("a", 4)],
        ["recv", msg("a", 6)],  # a jump: dropped, leave + join with since
        ["recv", msg("a", 7)],  # while the repair's join is in flight: stale
        ["recv", {"type": "joined", "room": "a", "seq": 7, "epoch": "e1", "recovered": True}],
        ["recv", msg("a", 5)], ["recv", msg("a", 6)], ["recv", msg("a", 7)], ["recv", msg("a", 8)],
        ["lost"], ["open", W1], ["recv", {"type": "welcome", "workerId": "w1"}],
        ["recv", {"type": "joined", "room": "a", "seq": 10, "epoch": "e1", "id": 3, "recovered": True}],
        ["recv", msg("a", 9)], ["recv", msg("a", 10)], ["recv", msg("a", 11)],
        ["recv", {"type": "joined", "room": "b", "seq": 1, "epoch": "e9", "id": 4}],
        ["recv", {"type": "ack", "id": 99}], ["recv", {"type": "pong", "id": 1}],
    ],
    "losses: truncated history, a new epoch, an old epoch's straggler": [
        ["join", "r"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "r", "seq": 5, "epoch": "e1", "id": 1}], ["recv", msg("r", 6)],
        ["lost"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "r", "seq": 40, "epoch": "e1", "id": 2, "recovered": False,
                  "reason": "history_truncated"}],
        ["recv", msg("r", 30)], ["recv", msg("r", 31)],
        ["recv", {"type": "joined", "room": "r", "seq": 0, "epoch": "e2", "recovered": False, "reason": "epoch_changed"}],
        ["recv", msg("r", 1, "e2")], ["recv", msg("r", 32, "e1")], ["recv", msg("r", 2, "e2")],
    ],
    "too_many_missed pages through re-joins": [
        ["join", "p"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "p", "seq": 1, "epoch": "e1", "id": 1}],
        ["lost"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "p", "seq": 9, "epoch": "e1", "id": 2, "recovered": False,
                  "reason": "too_many_missed"}],
        ["recv", msg("p", 2)], ["recv", msg("p", 3)], ["recv", msg("p", 10)],
        ["recv", {"type": "joined", "room": "p", "seq": 10, "epoch": "e1", "recovered": True}],
        *[["recv", msg("p", seq)] for seq in range(4, 12)],
    ],
    "hints: moved, stale rings, silent hosts, reconnect, refused re-joins": [
        ["join", "m"], ["join", "z"], ["route", 5], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "m", "seq": 0, "epoch": "", "id": 1}],
        ["recv", {"type": "moved", "room": "z", "url": W1, "epoch": 6}],  # not the home room
        ["recv", {"type": "moved", "room": "m", "url": W1, "epoch": 4}],  # older ring than the router's
        ["unreachable", W2],
        ["recv", {"type": "moved", "room": "m", "url": W2, "epoch": 5}],  # a silent host, same ring
        ["recv", {"type": "moved", "room": "m", "url": W1, "epoch": 6}],  # followed
        ["lost"], ["open", W1], ["recv", {"type": "welcome"}],
        ["recv", {"type": "error", "code": "BUS_UNAVAILABLE", "message": "x", "id": 3}],
        ["recv", {"type": "error", "code": "INVALID_ROOM", "message": "y", "id": 4}],
        ["recv", {"type": "reconnect", "reason": "drain", "url": W0, "delayMs": 250}],
        ["recv", {"type": "error", "code": "RATE_LIMIT_EXCEEDED", "message": "z"}],
        ["recv", {"type": "moved", "room": "m", "url": W2, "epoch": 7}],  # a newer ring names it again
    ],
    "a silent host that answers again": [
        ["join", "s"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "s", "seq": 0, "epoch": "", "id": 1}],
        ["unreachable", W2], ["lost"], ["open", W2], ["recv", {"type": "welcome"}],  # it answers: unmarked
        ["recv", {"type": "moved", "room": "s", "url": W0, "epoch": 4}],  # followed
        ["lost"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "moved", "room": "s", "url": W2, "epoch": 4}],  # followed, though the same ring
    ],
    "presence requests and presence_diff events": [
        ["join", "c"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "c", "seq": 0, "epoch": "", "id": 1}],
        ["presence", "c", False], ["presence", "c", True], ["presence", "elsewhere", False],
        ["recv", {"type": "presence", "room": "c", "id": 2, "count": 1, "complete": True,
                  "members": [{"user": "u1", "conn": "k1", "info": None, "worker": "w0"}]}],
        ["recv", {"type": "presence_stats", "room": "c", "id": 3, "connections": 1, "users": 1, "complete": True}],
        ["recv", {"type": "error", "code": "PRESENCE_DISABLED", "message": "x", "id": 4}],
        ["recv", {"type": "presence_diff", "room": "c", "joined": [{"user": "u2", "conn": "k2", "info": None,
                  "worker": "w0"}], "left": [], "joinedCount": 1, "leftCount": 0, "truncated": False}],
        ["recv", {"type": "presence_diff", "room": "c", "joined": [], "left": [], "joinedCount": 200,
                  "leftCount": 3, "truncated": True}],
        ["recv", {"type": "presence_diff", "room": "not-joined", "joined": [], "left": []}],  # not ours: a notice
        ["recv", {"type": "presence_diff", "joined": []}],  # no room
        ["recv", {"type": "presence", "room": "c", "id": 2}],  # its request was answered already
        ["lost"], ["open", W0], ["recv", {"type": "welcome"}],
        ["recv", {"type": "joined", "room": "c", "seq": 0, "epoch": "", "id": 5}], ["presence", "c", False],
    ],
}

KINDS = {  # Python event class -> the JS core's `kind`
    "Connected": "connected", "Message": "message", "Duplicate": "duplicate", "OutOfOrder": "outOfOrder",
    "Gap": "gap", "Joined": "joined", "Reply": "reply", "RequestFailed": "requestFailed", "Notice": "notice",
    "Reconnect": "reconnect", "PresenceDiff": "presenceDiff",
}


def describe_python(event: Any) -> dict:
    kind = KINDS[type(event).__name__]
    out: dict[str, Any] = {"kind": kind}
    if kind == "reconnect":
        out.update(reason=event.reason, url=event.url, closeNow=event.close_now,
                   delayMs=None if event.delay_s is None else round(event.delay_s * 1000))
    if kind == "requestFailed":
        out.update(code=event.code, roomDropped=event.room_dropped)
    if kind == "joined":
        out.update(unrecovered=event.unrecovered, fetchingMore=event.fetching_more)
    if kind == "message":
        out.update(declaredJump=event.declared_jump)
    if kind == "presenceDiff":
        out.update(room=event.room, frame=event.frame)
    if kind == "reply":
        out.update(request=[event.request.kind, event.request.room], frame=event.frame)
    return out


def run_python(script: list[list[Any]]) -> list[dict]:
    core = client_core.ClientCore()
    steps = []
    for op, *args in script:
        events: list[Any] = []
        if op == "join":
            core.join(args[0])
        elif op == "open":
            core.connection_opened(args[0])
        elif op == "recv":
            events = core.receive(json.loads(json.dumps(args[0])))
        elif op == "lost":
            core.connection_lost()
        elif op == "route":
            core.route_answer(args[0])
        elif op == "unreachable":
            core.host_unreachable(args[0])
        elif op == "presence":
            core.presence(args[0], stats=args[1])
        positions = {room: core.position(room) for room in sorted(core.rooms)}
        steps.append({
            "events": [describe_python(e) for e in events], "send": core.frames_to_send(),
            "positions": {r: [p.seq, p.epoch] if p else None for r, p in positions.items()},
            "duplicates": core.duplicates_dropped,
        })
    return steps


RUN_JS = """async ([script]) => {
  const { ClientCore } = await import("/clients/ringcast.js");
  const core = new ClientCore();
  const steps = [];
  const resumed = [];
  for (const [op, ...args] of script) {
    let events = [];
    if (op === "join") core.join(args[0]);
    else if (op === "open") core.connectionOpened(args[0]);
    else if (op === "recv") events = core.receive(structuredClone(args[0]));
    else if (op === "lost") core.connectionLost();
    else if (op === "route") core.routeAnswer(args[0]);
    else if (op === "unreachable") core.hostUnreachable(args[0]);
    else if (op === "presence") core.presence(args[0], args[1]);
    const described = [];
    for (const e of events) {
      if (e.kind === "resumed") { resumed.push({ room: e.room, missed: e.missed, recovered: e.recovered }); continue; }
      const out = { kind: e.kind };
      if (e.kind === "reconnect") Object.assign(out, { reason: e.reason, url: e.url, closeNow: e.closeNow, delayMs: e.delayMs === null ? null : Math.round(e.delayMs) });
      if (e.kind === "requestFailed") Object.assign(out, { code: e.code, roomDropped: e.roomDropped });
      if (e.kind === "joined") Object.assign(out, { unrecovered: e.unrecovered, fetchingMore: e.fetchingMore });
      if (e.kind === "message") Object.assign(out, { declaredJump: e.declaredJump });
      if (e.kind === "presenceDiff") Object.assign(out, { room: e.room, frame: e.frame });
      if (e.kind === "reply") Object.assign(out, { request: [e.request.kind, e.request.room], frame: e.frame });
      described.push(out);
    }
    const positions = {};
    for (const room of [...core.rooms.keys()].sort()) {
      const p = core.position(room);
      positions[room] = p ? [p.seq, p.epoch] : null;
    }
    steps.push({ events: described, send: core.framesToSend(), positions, duplicates: core.duplicatesDropped });
  }
  return { steps, resumed };
}"""


@pytest.fixture
async def page(browser) -> Page:
    router = RouterProcess(port=free_port(), args=["--nodes", "127.0.0.1:9"]).start()  # serves the files; no worker needed
    try:
        page = await browser.new_page()
        await page.goto(router.url("/demo/"))
        yield page
    finally:
        router.stop()


async def test_the_js_core_answers_every_frame_like_the_python_core(page):
    resumed = {}
    for name, script in SCRIPTS.items():
        result = await page.evaluate(RUN_JS, [script])
        expected = run_python(script)
        for index, (js, py) in enumerate(zip(result["steps"], expected)):
            assert js == py, f"{name}: step {index} {script[index]}"
        assert len(result["steps"]) == len(expected), name
        resumed[name] = result["resumed"]
    # What the demo's notice says: the resume after the reconnect replayed 9 and 10.
    assert {"room": "a", "missed": 2, "recovered": True} in resumed["resume, duplicates and a repaired gap"]
    # Both pages of a too_many_missed resume count as one: 2, 3 (first page), then 4..10 (the re-join's replay).
    assert resumed["too_many_missed pages through re-joins"] == [{"room": "p", "missed": 9, "recovered": True}]


async def test_backoff_and_token_helpers(page):
    policy = BackoffPolicy(base_s=1.0, factor=2.0, cap_s=30.0, jitter=0.3)
    got = await page.evaluate("""async () => {
      const m = await import("/clients/ringcast.js");
      const p = { baseMs: 1000, factor: 2, capMs: 30000, jitter: 0.3 };
      const payload = btoa(JSON.stringify({ sub: "u", exp: 1795858400 })).replace(/=+$/, "");
      return {
        ceilings: [0, 1, 2, 3, 4, 5, 6, 1000].map((n) => m.backoffCeilingMs(n)),
        delays: [0, 0.5, 0.999].map((u) => m.backoffDelayMs(2, p, () => u)),
        full: [0, 0.5].map((u) => m.backoffDelayMs(1, m.DEFAULT_BACKOFF, () => u)),
        exp: m.tokenExpiry(`h.${payload}.s`), noExp: m.tokenExpiry("not-a-jwt"),
        url: m.withToken("ws://h:1/ws", "a+b/c"), url2: m.withToken("ws://h:1/ws?x=1", "t"),
      };
    }""")
    assert got["ceilings"] == [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    # The same formula as router/backoff.py (ceiling * (1 - jitter * U)), in ms.
    assert got["delays"] == pytest.approx([policy.delay_s(2, lambda: u) * 1000 for u in (0, 0.5, 0.999)])
    assert got["full"] == [2000, 1000]  # the browser default is full jitter: uniform in [0, ceiling]
    token = "h." + base64.urlsafe_b64encode(json.dumps({"sub": "u", "exp": 1795858400}).encode()).decode().rstrip("=") + ".s"
    assert client_core.token_expiry(token) == got["exp"] == 1795858400
    assert got["noExp"] is None
    assert (got["url"], got["url2"]) == ("ws://h:1/ws?token=a%2Bb%2Fc", "ws://h:1/ws?x=1&token=t")


async def test_the_route_service_serves_the_demo_files_and_nothing_else(page):
    origin = page.url.removesuffix("/demo/")
    for path, (name, content_type) in FILES.items():
        response = await page.request.get(origin + path)
        assert response.status == 200 and response.headers["content-type"] == content_type, path
    served = await (await page.request.get(origin + "/clients/ringcast.js")).body()
    assert served == (REPO / "clients/js/ringcast.js").read_bytes()  # the package ships the module itself
    for path in ("/demo/../router/service.py", "/demo/ringcast.js", "/demo/index.html", "/clients/", "/demo/x"):
        # 404, or 405 where only the CORS preflight route (OPTIONS on every path) matches: never a file.
        assert (await page.request.get(origin + path)).status in (404, 405), path
    redirected = await page.request.get(origin + "/demo", max_redirects=0)
    assert redirected.status == 302 and redirected.headers["location"] == "/demo/"
