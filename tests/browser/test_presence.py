"""Presence in the browser client (clients/js/ringcast.js) and the demo's members panel, in a real
headless Chromium against a real worker started with --presence-rule / --presence-events-rule, a
real route service and Redis; and a publish with an idempotency key retried after a lost connection.

Two pages in one room each list both members (one read by `presence` on join, the other added by a
`presence_diff`); a page that closes drops out of the other's panel; a room no rule covers shows the
one-line PRESENCE_DISABLED note; a page that was away when someone joined (the diff never reached it)
lists them once it is back (it reads `presence` again on its re-join). A publish whose socket is cut before its ack is retried by the
module with the same key: the room gets the message once and the retry's ack says `duplicate`.
"""

from __future__ import annotations


from playwright.async_api import expect

from chaos.eventually import eventually
from tests.browser.pages import RECONNECT_TIMEOUT_MS, DemoPage
from tests.wsclient import WsClient

ROOM = "chat:lobby"
PRESENCE_RULE = "chat:*"
# A closed page leaves when its socket's close reaches the worker; the diff follows within a window.
LEAVE_TIMEOUT_MS = 15_000


async def start_cluster(start_node, start_router):
    node = start_node(1, "--presence-rule", PRESENCE_RULE, "--presence-events-rule", PRESENCE_RULE)
    return node, start_router("--nodes", f"127.0.0.1:{node.ports[0]}")


def members(page: DemoPage):
    return page.page.locator("#members li")


async def test_two_pages_list_each_other_as_members_and_a_closed_page_drops_out(
    redis_server, start_node, start_router, browser, artifacts
):
    _, router = await start_cluster(start_node, start_router)
    alice = await DemoPage.open(browser, router, "alice", ROOM)
    await expect(members(alice)).to_have_text(["alice (you)"])
    bob = await DemoPage.open(browser, router, "bob", ROOM)
    # Bob read both with `presence` on joining; Alice got Bob from a presence_diff. Neither has spoken:
    # the other is a guest until a message gives its name.
    await expect(members(bob)).to_have_count(2)
    await expect(members(bob).filter(has_text="bob (you)")).to_have_count(1)
    await expect(members(alice)).to_have_count(2)
    await expect(alice.page.locator("#members")).to_have_attribute("data-source", "presence")
    await alice.say("hi")
    await bob.say("hello")
    await expect(members(alice)).to_have_text(["alice (you)", "bob"])
    await expect(members(bob)).to_have_text(["alice", "bob (you)"])

    stats = await alice.page.evaluate("(room) => window.ringcastDemo.client.presenceStats(room)", ROOM)
    assert (stats["connections"], stats["users"], stats["complete"]) == (2, 2, True)
    await alice.page.screenshot(path=artifacts / "presence-members.png")

    await bob.page.context.close()
    await expect(members(alice)).to_have_text(["alice (you)"], timeout=LEAVE_TIMEOUT_MS)

    # A room no --presence-rule covers: the module rejects with the server's code, the panel says so.
    code = await alice.page.evaluate("""(room) => window.ringcastDemo.client.presence(room).then(
        () => "answered", (error) => error.code)""", "plain")
    assert code == "PRESENCE_DISABLED"
    await alice.page.fill("#room", "plain")
    await alice.page.click("#join")
    await expect(alice.page.locator('#rooms li.selected[data-room="plain"]')).to_have_count(1)
    await expect(alice.page.locator("#members-note")).to_contain_text("No presence on this server for this room")
    await expect(members(alice)).to_have_text(["alice (you)"])
    await expect(alice.errors).to_have_count(0)
    assert alice.page_errors == []


# The page publishes with a key and cuts its socket at once: the message frame is out, its ack never
# arrives (a closing WebSocket delivers nothing more), so the module retries on the next connection.
PUBLISH_THEN_CUT = """async ([room, key]) => {
  const client = window.ringcastDemo.client;
  const reasons = [];
  client.addEventListener("state", (e) => reasons.push(e.detail.state));
  const first = client.publish(room, { data: { name: "alice", text: "once" } }, { idempotencyKey: key });
  client._ws.close();  // the frame went out synchronously with publish(); the ack is lost with the socket
  const ack = await first;
  const again = await client.publish(room, { data: { name: "alice", text: "once" } }, { idempotencyKey: key });
  return { ack, again, reasons };
}"""


async def test_a_publish_retried_with_its_idempotency_key_is_delivered_once(
    redis_server, start_node, start_router, browser
):
    _, router = await start_cluster(start_node, start_router)
    alice = await DemoPage.open(browser, router, "alice", ROOM)
    bob = await DemoPage.open(browser, router, "bob", ROOM)
    got = await alice.page.evaluate(PUBLISH_THEN_CUT, [ROOM, "k-once-1"])
    assert "waiting" in got["reasons"]  # the socket was lost and the publish waited for the next one
    assert got["ack"]["duplicate"] is True  # the first try was published: the retry published nothing
    assert got["again"]["duplicate"] is True  # a later call with the same key too
    assert (got["again"]["seq"], got["again"]["epoch"]) == (got["ack"]["seq"], got["ack"]["epoch"])
    await alice.say("after")
    for page in (alice, bob):
        await expect(page.texts(ROOM)).to_have_text(["once", "after"], timeout=RECONNECT_TIMEOUT_MS)
        await expect(page.errors).to_have_count(0)
        assert page.page_errors == []


async def test_a_page_back_from_a_lost_connection_lists_who_joined_while_it_was_away(
    redis_server, start_node, start_router, browser
):
    node, router = await start_cluster(start_node, start_router)
    alice = await DemoPage.open(browser, router, "alice", ROOM)
    await expect(members(alice)).to_have_text(["alice (you)"])
    # Alice's route lookups are held while carol joins: the presence_diff of that join never reaches her.
    lookup_held, release = await alice.hold_route_lookups()
    await alice.page.evaluate("() => window.ringcastDemo.client._ws.close()")
    await eventually(lookup_held.is_set, what="alice's page to ask the router again", timeout_s=30)
    carol = await WsClient.connect(node.ws_url(0))
    try:
        await carol.send({"type": "join", "room": ROOM, "id": 1})
        await carol.expect("joined")
        release.set()
        await expect(alice.state).to_have_attribute("data-state", "connected", timeout=RECONNECT_TIMEOUT_MS)
        await expect(members(alice)).to_have_count(2)  # herself (a new connection) and carol, a guest
        await expect(members(alice).filter(has_text="alice (you)")).to_have_count(1)
        await expect(members(alice).filter(has_text="guest ")).to_have_count(1)
    finally:
        await carol.close()
    # Carol's leave may fall in the window of her join: the diff still lists her as left (node.presence_events).
    await expect(members(alice)).to_have_count(1, timeout=10_000)  # under the demo's 30 s re-read
    await expect(alice.errors).to_have_count(0)
    assert alice.page_errors == []
