"""The browser client's msgpack codec against a real worker: with a msgpack library passed in
(here a small test shim, tests/browser/msgpack_shim.js), it asks for `ringcast.msgpack`, sends
binary frames the worker decodes, and decodes the worker's binary frames, including messages
published by a JSON client."""

from __future__ import annotations

from pathlib import Path

from chaos.eventually import eventually
from tests.wsclient import WsClient

SHIM = (Path(__file__).resolve().parent / "msgpack_shim.js").read_text()
DATA = {"n": 1, "s": "héllo", "f": 1.5, "l": [1, -2, None, True], "big": 1795858335524}

CLIENT = """async (data) => {
  const { RingcastClient } = await import("/clients/ringcast.js");
  const shim = await import("/test/msgpack_shim.js");
  window.coded = { encoded: 0, decoded: 0 };  // every frame must go through the codec, both ways
  const msgpack = {
    encode: (value) => (window.coded.encoded++, shim.encode(value)),
    decode: (bytes) => (window.coded.decoded++, shim.decode(bytes)),
  };
  const client = new RingcastClient(location.origin, { msgpack });
  window.client = client;
  window.received = [];
  client.addEventListener("message", (e) => window.received.push(e.detail));
  await client.join("lobby");
  const ack = await client.publish("lobby", { data });
  return { ack, worker: client.workerId };
}"""


async def test_msgpack_frames_both_ways(browser, start_node, start_router):
    node = start_node(1)
    router = start_router("--nodes", f"127.0.0.1:{node.ports[0]}")
    page = await browser.new_page()
    await page.route("**/test/msgpack_shim.js",
                     lambda route: route.fulfill(body=SHIM, content_type="text/javascript"))
    await page.goto(router.url("/demo/"))
    result = await page.evaluate(CLIENT, DATA)
    assert result["ack"]["seq"] == 1 and result["worker"] == f"127.0.0.1:{node.ports[0]}"
    publisher = await WsClient.connect(node.ws_url(0))  # a JSON client in the same room
    try:
        await publisher.join("lobby")
        await publisher.send({"type": "message", "room": "lobby", "text": "from json"})
        received = await eventually(lambda: page.evaluate("window.received.length == 2 && window.received"),
                                    what="both messages")
    finally:
        await publisher.close()
    assert [m["seq"] for m in received] == [1, 2]
    assert received[0]["data"] == DATA and received[1]["text"] == "from json"
    assert isinstance(received[0]["ts"], int) and received[0]["ts"] > 2**32  # a uint64 decoded as a number
    coded = await page.evaluate("window.coded")
    # Out: join, message. In: welcome, joined, ack, two messages (and nothing was a text frame).
    assert coded["encoded"] >= 2 and coded["decoded"] >= 5, coded
