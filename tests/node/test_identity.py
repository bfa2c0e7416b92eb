"""A node's identity and addresses (node/config.py): the advertised host, node id, worker ids,
public URL templates and their validation, and the lone-node ring every sibling computes alike.

The primary address of a wildcard --host is read from psutil's view of the interfaces; these
tests replace that view, so they do not depend on the machine's network.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from common.settings import SettingsError
from node import config as node_config
from node.config import NodeConfig, primary_address
from router.ring import Member


def interfaces(monkeypatch, addrs: dict[str, list[tuple[int, str]]], up: dict[str, bool]) -> None:
    """Make psutil report these interfaces: {name: [(family, address)]} and which ones are up."""
    monkeypatch.setattr(node_config.psutil, "net_if_addrs", lambda: {
        name: [SimpleNamespace(family=family, address=address) for family, address in entries]
        for name, entries in addrs.items()
    })
    monkeypatch.setattr(node_config.psutil, "net_if_stats", lambda: {name: SimpleNamespace(isup=v) for name, v in up.items()})


AF_LINK = getattr(socket, "AF_PACKET", 17)


# --- the advertised host and the node id ----------------------------------------------------------


def test_a_named_host_is_advertised_as_is_and_worker_ids_stay_host_port():
    config = NodeConfig(host="127.0.0.1", port=8700, workers=2)
    config.validate()
    assert config.advertised_host() == "127.0.0.1" and config.node_name == "127.0.0.1"
    first, second = config.for_worker(0), config.for_worker(1)
    assert (first.shard_id, second.shard_id) == ("127.0.0.1:8700", "127.0.0.1:8701")
    assert (first.url, second.url) == ("ws://127.0.0.1:8700/ws", "ws://127.0.0.1:8701/ws")
    assert (first.address, second.address) == ("127.0.0.1:8700", "127.0.0.1:8701")


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", ""])
def test_a_wildcard_host_advertises_the_first_up_non_loopback_ipv4_address(monkeypatch, wildcard):
    interfaces(monkeypatch, {
        "lo": [(socket.AF_INET, "127.0.0.1")],
        "eth1": [(AF_LINK, "00:11:22:33:44:55"), (socket.AF_INET6, "fe80::1"), (socket.AF_INET, "10.0.0.7")],
        "eth0": [(socket.AF_INET, "169.254.3.3"), (socket.AF_INET, "10.0.0.5")],  # link-local skipped
        "down0": [(socket.AF_INET, "10.9.9.9")],
    }, up={"lo": True, "eth0": True, "eth1": True, "down0": False})
    config = NodeConfig(host=wildcard, port=9000, workers=2)
    config.validate()
    assert config.advertised_host() == "10.0.0.5"  # eth0 sorts before eth1: the same answer every time
    worker = config.for_worker(1)
    assert worker.advertise_host == "10.0.0.5" and worker.node_id == "10.0.0.5"
    assert worker.shard_id == "10.0.0.5:9001" and worker.url == "ws://10.0.0.5:9001/ws"
    assert worker.host == wildcard  # it still binds the wildcard


def test_the_primary_address_ignores_interfaces_that_are_down_or_only_loopback(monkeypatch):
    interfaces(monkeypatch, {"lo": [(socket.AF_INET, "127.0.0.1")], "eth0": [(socket.AF_INET, "10.0.0.5")],
                             "wlan0": [(socket.AF_INET, "192.168.1.20")]},
               up={"lo": True, "eth0": False, "wlan0": True})
    assert primary_address() == "192.168.1.20"


def test_no_usable_interface_is_a_settings_error_naming_the_fix(monkeypatch):
    interfaces(monkeypatch, {"lo": [(socket.AF_INET, "127.0.0.1")], "eth0": [(socket.AF_INET6, "2001:db8::1")]},
               up={"lo": True, "eth0": True})
    with pytest.raises(SettingsError, match="--advertise-host"):
        NodeConfig(host="0.0.0.0", workers=1).validate()
    # An explicit advertised host needs no interface at all.
    NodeConfig(host="0.0.0.0", advertise_host="edge-1.internal", workers=1).validate()


def test_the_advertised_host_and_node_id_are_resolved_once_by_the_supervisor(monkeypatch):
    interfaces(monkeypatch, {"eth0": [(socket.AF_INET, "10.0.0.5")]}, up={"eth0": True})
    supervisor = NodeConfig(host="0.0.0.0", port=9000, workers=2).resolved()
    interfaces(monkeypatch, {"eth0": [(socket.AF_INET, "10.0.0.99")]}, up={"eth0": True})  # the host's address changes
    assert [supervisor.for_worker(i).shard_id for i in range(2)] == ["10.0.0.5:9000", "10.0.0.5:9001"]
    assert supervisor.for_worker(1).sibling_members()[0].address == "10.0.0.5:9000"


def test_the_node_id_names_the_workers_and_the_advertised_host_their_addresses():
    config = NodeConfig(host="0.0.0.0", advertise_host="10.1.2.3", node_id="edge-a", port=8700, workers=3)
    config.validate()
    worker = config.for_worker(2)
    assert worker.shard_id == "edge-a:8702" and worker.address == "10.1.2.3:8702"
    assert worker.url == "ws://10.1.2.3:8702/ws"
    assert (worker.worker_index, worker.node_workers, worker.workers) == (2, 3, 1)


def test_a_worker_id_is_kept_for_a_single_worker_and_refused_for_several():
    assert NodeConfig(worker_id="solo", workers=1).for_worker(0).shard_id == "solo"
    with pytest.raises(SettingsError, match="--node-id"):
        NodeConfig(worker_id="solo", workers=2).validate()


# --- public URL templates --------------------------------------------------------------------------


def test_the_template_is_filled_per_worker():
    config = NodeConfig(host="127.0.0.1", advertise_host="10.1.2.3", node_id="edge-a", port=8700, workers=2,
                        public_url="wss://edge.example.com/w/{node_id}-{index}?h={host}&p={port}")
    config.validate()
    assert [config.for_worker(i).url for i in range(2)] == [
        "wss://edge.example.com/w/edge-a-0?h=10.1.2.3&p=8700",
        "wss://edge.example.com/w/edge-a-1?h=10.1.2.3&p=8701",
    ]


def test_an_ipv6_advertised_host_is_bracketed_in_urls_and_addresses():
    config = NodeConfig(host="::", advertise_host="2001:db8::7", port=8700, workers=2)
    config.validate()
    worker = config.for_worker(1)
    assert worker.url == "ws://[2001:db8::7]:8701/ws"
    assert worker.address == "[2001:db8::7]:8701"
    assert worker.shard_id == "2001:db8::7:8701"  # NODE_ID:PORT, the node id being the advertised host


@pytest.mark.parametrize("template, message", [
    ("ws://{host}:{port}/{worker}", "unknown placeholder {worker}"),
    ("ws://{host}:{port}/{index!r}", "unknown placeholder"),
    ("ws://{host}:{port}/{index:03d}", "unknown placeholder"),
    ("ws://{host}:{port}/{", "--public-url"),
    ("http://{host}:{port}/ws", "ws:// or wss://"),
    ("{host}:{port}", "ws:// or wss://"),
    ("wss:///{index}", "ws:// or wss://"),
    ("ws://{host}:port{index}/ws", "--public-url"),
])
def test_a_bad_template_is_a_settings_error(template, message):
    with pytest.raises(SettingsError, match=message.replace("{", r"\{").replace("}", r"\}")):
        NodeConfig(workers=1, public_url=template).validate()


def test_several_workers_need_index_or_port_in_the_template():
    with pytest.raises(SettingsError, match="same URL"):
        NodeConfig(workers=2, public_url="wss://edge.example.com/ws").validate()
    NodeConfig(workers=1, public_url="wss://edge.example.com/ws").validate()  # one worker: one URL
    NodeConfig(workers=2, public_url="wss://edge.example.com:{port}/ws").validate()
    NodeConfig(workers=2, public_url="wss://edge.example.com/w{index}").validate()


@pytest.mark.parametrize("fields, message", [
    ({"advertise_host": "0.0.0.0"}, "wildcard"),
    ({"node_id": "edge a"}, "whitespace"),
    ({"worker_index": 2, "node_workers": 2}, "worker_index"),
])
def test_other_identity_errors(fields, message):
    with pytest.raises(SettingsError, match=message):
        NodeConfig(workers=1, **fields).validate()


# --- the lone-node ring ------------------------------------------------------------------------------


def test_every_sibling_computes_the_same_lone_node_ring():
    config = NodeConfig(host="127.0.0.1", advertise_host="10.1.2.3", node_id="edge-a", port=8700, workers=3,
                        public_url="wss://edge.example.com/w/{node_id}-{index}")
    rings = [config.for_worker(i).sibling_members() for i in range(3)]
    assert rings[0] == rings[1] == rings[2] == [
        Member(f"edge-a:{8700 + i}", f"wss://edge.example.com/w/edge-a-{i}", 1, f"10.1.2.3:{8700 + i}") for i in range(3)
    ]
    # Each member is exactly what that worker says of itself.
    assert [(m.id, m.url, m.address) for m in rings[0]] == [
        (w.shard_id, w.url, w.address) for w in (config.for_worker(i) for i in range(3))
    ]
