"""chaos/ports.py: the ports handed to local servers are bindable, outside the ephemeral range, and
never shared between pytest-xdist workers."""

from __future__ import annotations

import socket

from chaos.ports import LOWEST_PORT, PortPicker, _ephemeral_low, port_slice


def test_without_xdist_the_slice_is_everything_between_the_registered_ports_and_the_ephemeral_range():
    ports = port_slice({})
    assert (ports.start, ports.stop) == (LOWEST_PORT, _ephemeral_low())


def test_xdist_workers_get_disjoint_slices_below_the_ephemeral_range():
    slices = [port_slice({"PYTEST_XDIST_WORKER": f"gw{i}", "PYTEST_XDIST_WORKER_COUNT": "3"}) for i in range(3)]
    for i, ports in enumerate(slices):
        assert len(ports) > 1000 and ports.start >= LOWEST_PORT and ports.stop <= _ephemeral_low()
        for other in slices[i + 1:]:
            assert set(ports).isdisjoint(other)


def test_a_picker_hands_out_bindable_ports_and_skips_a_bound_one():
    picker = PortPicker(range(LOWEST_PORT, LOWEST_PORT + 50))
    held = socket.socket()
    held.bind(("127.0.0.1", picker.ports[picker._next]))  # the port it would hand out next is taken
    try:
        port = picker.port()
        assert port != held.getsockname()[1]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    finally:
        held.close()


def test_consecutive_picks_differ_and_a_range_is_consecutive_and_bindable():
    picker = PortPicker(range(LOWEST_PORT + 100, LOWEST_PORT + 400))
    picked = [picker.port() for _ in range(20)]
    assert len(set(picked)) == 20  # never the same port twice before anyone binds it
    first = picker.port_range(4)
    sockets = []
    try:
        for port in range(first, first + 4):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", port))
    finally:
        for sock in sockets:
            sock.close()
