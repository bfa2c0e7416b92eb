"""The demo chat page and the browser client (clients/js/ringcast.js) in a real headless Chromium,
against real workers, a real route service, Redis and (for the drain) a real control plane.

Two pages chat in one room; the worker serving them is SIGKILLed and a page shows every message
published while it was away, in order and once, with the "resumed, N missed messages recovered"
notice; a drain moves a page to the other worker with no error shown; a page a stale router sent
to the wrong worker follows `moved` to the room's owner. Screenshots go to
tests/browser/artifacts/.
"""

from __future__ import annotations

import os
import signal

from playwright.async_api import expect

from chaos.cluster import http_json
from chaos.eventually import eventually
from tests.browser.pages import RECONNECT_TIMEOUT_MS, DemoPage
from tests.control.helpers import wait_ring
from tests.router.helpers import publish_ring, room_owned_by
from tests.wsclient import WsClient

MISSED = 5  # messages published while a page is away


async def test_two_pages_chat_and_a_page_whose_worker_is_killed_shows_every_missed_message_once(
    redis_server, start_node, start_router, browser, artifacts
):
    node = start_node(2, "--restart-backoff-base-s", "0.2")
    ring = await publish_ring(redis_server, node, epoch=1)
    router = start_router("--redis", redis_server.url)
    victim = f"127.0.0.1:{node.ports[0]}"
    room = room_owned_by(ring, victim)
    alice = await DemoPage.open(browser, router, "alice", room)
    bob = await DemoPage.open(browser, router, "bob", room)
    for page in (alice, bob):
        await expect(page.worker).to_have_text(victim)  # placed on the room's owner by the route service

    await alice.say("hi bob")
    await expect(bob.texts(room)).to_have_text(["hi bob"])
    await bob.say("hi alice")
    for page in (alice, bob):
        await expect(page.texts(room)).to_have_text(["hi bob", "hi alice"])
    await expect(alice.page.locator("#members li")).to_have_text(["alice (you)", "bob"])

    # Alice's route lookups are held until the messages below are published: she is away while they
    # are, whatever her backoff draws (Playwright holds the request; the page waits as for a slow router).
    lookup_held, release = await alice.hold_route_lookups()
    os.kill(node.worker_pid(0), signal.SIGKILL)  # no goodbye: the supervisor restarts it
    await eventually(lookup_held.is_set, what="alice's page to ask the router again", timeout_s=30)
    await expect(alice.state).to_have_attribute("data-state", "connecting")

    publisher = await WsClient.connect(node.ws_url(1))  # the other worker serves the room too
    try:
        await publisher.join(room)
        for n in range(1, MISSED + 1):
            await publisher.send({"type": "message", "room": room, "data": {"name": "carol", "text": f"missed {n}"},
                                  "id": n})
            assert (await publisher.expect("ack"))["id"] == n
    finally:
        await publisher.close()
    release.set()

    expected = ["hi bob", "hi alice", *[f"missed {n}" for n in range(1, MISSED + 1)]]
    await expect(alice.notices).to_have_text([f"resumed, {MISSED} missed messages recovered in {room}"],
                                             timeout=RECONNECT_TIMEOUT_MS)
    for page in (alice, bob):  # every message, in order, once (to_have_text compares the whole list)
        await expect(page.texts(room)).to_have_text(expected, timeout=RECONNECT_TIMEOUT_MS)
        await expect(page.state).to_have_attribute("data-state", "connected")
    await alice.say("back")
    for page in (alice, bob):
        await expect(page.texts(room)).to_have_text([*expected, "back"])
    await expect(alice.page.locator("#members li")).to_have_text(["alice (you)", "bob", "carol"])
    await alice.page.screenshot(path=artifacts / "resumed-after-kill.png")
    for page in (alice, bob):
        await expect(page.errors).to_have_count(0)
        assert page.page_errors == []
    print(f"screenshot: {artifacts / 'resumed-after-kill.png'}")


async def test_a_drain_moves_a_page_to_another_worker_without_an_error(
    redis_server, start_node, start_control, start_router, browser, artifacts
):
    node = start_node(2)
    control = start_control()
    ring = await wait_ring(control, lambda r: len(r) == 2, "both workers in the ring")
    router = start_router("--redis", redis_server.url)
    await eventually(lambda: http_json(router.url("/ring"))[1].get("epoch"), equals=ring.epoch,
                     what="the router to follow the control plane's ring")
    drained, other = (f"127.0.0.1:{port}" for port in node.ports)
    room = room_owned_by(ring, drained)
    dave = await DemoPage.open(browser, router, "dave", room)
    await expect(dave.worker).to_have_text(drained)
    await dave.say("before the drain")
    await expect(dave.texts(room)).to_have_text(["before the drain"])

    # The reasons of the client's state changes from here on: the drain must come as a `reconnect` hint.
    await dave.page.evaluate("""() => { window.reasons = [];
        window.ringcastDemo.client.addEventListener("state", (e) => window.reasons.push(e.detail.reason)); }""")
    status, answer = control.call("POST", f"/v1/nodes/{drained}/drain", {"windowS": 1})
    assert status == 202, answer
    await expect(dave.worker).to_have_text(other, timeout=RECONNECT_TIMEOUT_MS)
    await expect(dave.state).to_have_attribute("data-state", "connected")
    assert "reconnect:drain" in await dave.page.evaluate("window.reasons")
    await dave.say("after the drain")
    await expect(dave.texts(room)).to_have_text(["before the drain", "after the drain"])
    await dave.page.screenshot(path=artifacts / "after-drain.png")
    await expect(dave.errors).to_have_count(0)
    await expect(dave.notices).to_have_count(0)  # nothing was missed, nothing lost: nothing to tell
    assert dave.page_errors == []


async def test_a_page_sent_to_the_wrong_worker_follows_moved_to_the_rooms_owner(
    redis_server, start_node, start_router, browser
):
    node = start_node(2)
    ring = await publish_ring(redis_server, node, epoch=2)
    owner = f"127.0.0.1:{node.ports[1]}"
    room = room_owned_by(ring, owner)
    stale_router = start_router("--nodes", f"127.0.0.1:{node.ports[0]}")  # knows worker 0 only
    erin = await DemoPage.open(browser, stale_router, "erin", room)
    await expect(erin.worker).to_have_text(owner, timeout=RECONNECT_TIMEOUT_MS)  # the hint, not the router, said so
    await expect(erin.state).to_have_attribute("data-state", "connected")
    await erin.say("on the owner")
    await expect(erin.texts(room)).to_have_text(["on the owner"])
    await expect(erin.errors).to_have_count(0)
    assert erin.page_errors == []
