"""Tokens in the browser client against a real worker with --auth required: `?token=` on the
connect, getToken() asked again after a refused upgrade, a short token refreshed in place
(`refresh` / `refreshed`) on the same socket, and a 4001 close without getToken ending the client."""

from __future__ import annotations

from chaos.eventually import eventually
from tests.security.tokens import KEY1, flag, token

LIFETIME_S = 5  # refreshed at half its remaining life: about every 2.5 s
REFRESHES = 4

CLIENT = """async ([withGetToken, firstToken]) => {
  const { RingcastClient } = await import("/clients/ringcast.js");
  const options = { backoff: { baseMs: 100, factor: 2, capMs: 1000, jitter: 1 } };
  if (withGetToken) {
    const queue = [firstToken];
    options.getToken = async () => (queue.length ? queue.shift() : await window.mintToken());
  } else {
    options.token = firstToken;
  }
  const client = new RingcastClient(location.origin, options);
  window.client = client;
  window.reasons = [];
  window.received = [];
  window.sockets = new Set();
  client.addEventListener("state", (e) => {
    window.reasons.push(e.detail.reason);
    if (e.detail.state === "connected") window.sockets.add(client.connectionId);
  });
  client.addEventListener("message", (e) => window.received.push(e.detail.text));
  try { await client.join("lobby"); } catch (error) { return String(error); }
  return "joined";
}"""


async def _page(browser, start_node, start_router):
    node = start_node(1, "--auth", "required", "--jwt-secret", flag(KEY1))
    router = start_router("--nodes", f"127.0.0.1:{node.ports[0]}")
    page = await browser.new_page()
    minted: list[str] = []

    def mint() -> str:
        minted.append(token(sub="alice", exp_in_s=LIFETIME_S))
        return minted[-1]

    await page.expose_function("mintToken", mint)
    await page.goto(router.url("/demo/"))
    return page, minted


async def test_get_token_after_a_refused_upgrade_then_refreshes_in_place(browser, start_node, start_router):
    page, minted = await _page(browser, start_node, start_router)
    # The first token is garbage: the worker refuses the upgrade (401), which a browser only sees as a
    # socket that never opened; the client then asks getToken() again before its next attempt.
    assert await page.evaluate(CLIENT, [True, "not-a-token"]) == "joined"
    reasons = await page.evaluate("window.reasons")
    assert "connect_failed" in reasons and len(minted) == 1, reasons

    async def refreshes() -> int:
        return await page.evaluate("window.client.tokenRefreshes")
    # Each refresh comes at least 2 s after the one before (half of a 4-5 s life), so by the fourth
    # the first token (exp within 5 s, leeway 0) has expired more than a second ago (4001 sweeps once
    # a second): the socket is still the first one only if the worker took the new tokens.
    await eventually(refreshes, equals=REFRESHES, what=f"{REFRESHES} refreshes in place", timeout_s=30)
    await page.evaluate("window.client.publish('lobby', 'still here')")
    await eventually(lambda: page.evaluate("window.received"), equals=["still here"], what="the message")
    assert len(await page.evaluate("[...window.sockets]")) == 1  # one socket all along: refreshed in place
    # (a third refresh may have come meanwhile on a slow machine)
    assert (await page.evaluate("window.reasons")).count("token_refreshed") >= REFRESHES
    assert len(minted) >= 1 + REFRESHES


async def test_without_get_token_an_expired_token_ends_the_client(browser, start_node, start_router):
    page, minted = await _page(browser, start_node, start_router)
    short = token(sub="alice", exp_in_s=2)
    assert await page.evaluate(CLIENT, [False, short]) == "joined"
    await eventually(lambda: page.evaluate("window.client.state.state"), equals="closed",
                     what="the 4001 close to end the client", timeout_s=20)
    assert (await page.evaluate("window.client.state.reason")) == "auth_failed:token_expired"
    error = await page.evaluate("window.client.publish('lobby', 'x').then(() => 'sent', (e) => e.name)")
    assert error == "AuthenticationFailed"
