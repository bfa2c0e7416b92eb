"""The tutorial's Artillery scenario, unmodified, across two real workers."""

from tests.wsclient import WsClient


async def test_tutorial_scenario_delivers_across_workers(start_node):
    node = start_node(2)
    sender = await WsClient.connect(node.ws_url(0))
    receiver = await WsClient.connect(node.ws_url(1), codec="msgpack")
    try:
        assert (await sender.join("general"))["room"] == "general"
        await receiver.join("general")
        await sender.send({"type": "message", "text": "Load test message"})
        got = await receiver.expect("message")
        assert got["text"] == "Load test message"
        assert got["room"] == "general" and got["seq"] == 1
        echoed = await sender.expect("message")
        assert echoed["seq"] == 1 and echoed["epoch"] == got["epoch"]
    finally:
        await sender.close()
        await receiver.close()
