"""node.client_address: trusted proxies, the client address behind them, and the per-IP limit key."""

from __future__ import annotations

import pytest

from node.client_address import MAX_HOPS, client_address, limit_key, parse_address, parse_trusted_proxies

PROXIES = parse_trusted_proxies(["10.0.0.0/8", "fd00::/8", "192.0.2.7"])


def xff(peer: str, *values: str, trusted=PROXIES) -> str:
    return client_address(peer, trusted, x_forwarded_for=list(values))


def fwd(peer: str, *values: str, trusted=PROXIES) -> str:
    return client_address(peer, trusted, forwarded=list(values))


# --- parsing the setting -------------------------------------------------------------------


def test_trusted_proxies_accept_ipv4_ipv6_bare_addresses_and_comma_lists():
    networks = parse_trusted_proxies(["10.0.0.0/8, 192.168.1.1", "fd00::/8", "", "2001:db8::1"])
    assert [str(n) for n in networks] == ["10.0.0.0/8", "192.168.1.1/32", "fd00::/8", "2001:db8::1/128"]
    assert parse_trusted_proxies([]) == ()


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "nonsense", "10.0.0/8x", "fd00::/129", "10.0.0.0/-1", "1.2.3.4.5"])
def test_a_bad_trusted_proxy_is_a_clear_value_error(entry):
    with pytest.raises(ValueError, match="trusted proxy .* is not an IPv4/IPv6 address or CIDR"):
        parse_trusted_proxies(["10.0.0.0/8", entry])


def test_host_bits_set_is_refused_with_the_network_meant():
    with pytest.raises(ValueError, match=r"did you mean 10\.0\.0\.0/8\?"):
        parse_trusted_proxies(["10.1.2.3/8"])


def test_an_ipv4_mapped_trusted_range_matches_ipv4_peers():
    trusted = parse_trusted_proxies(["::ffff:10.0.0.0/104"])
    assert [str(n) for n in trusted] == ["10.0.0.0/8"]
    assert xff("10.9.9.9", "203.0.113.5", trusted=trusted) == "203.0.113.5"


# --- addresses as headers and sockets write them -----------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("203.0.113.5", "203.0.113.5"),
    ("203.0.113.5:4711", "203.0.113.5"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ('"[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
    ('"192.0.2.43:47011"', "192.0.2.43"),
    ("::ffff:198.51.100.9", "198.51.100.9"),
    ("fe80::1%eth0", "fe80::1"),
    (" 203.0.113.5 ", "203.0.113.5"),
])
def test_addresses_with_ports_brackets_quotes_and_zones_parse(text, expected):
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize("text", [
    "", "unknown", "_hidden", "_SEVKISEK", "example.com", "203.0.113", "203.0.113.5:http", "[2001:db8::1",
    "[2001:db8::1]x", "[2001:db8::1]:", "2001:db8::1:80:", "1.2.3.4/32", '"', "\x00", "1" * 100, "[203.0.113.5]:a",
])
def test_garbage_is_not_an_address(text):
    assert parse_address(text) is None


# --- who is the client ---------------------------------------------------------------------------


def test_an_untrusted_peer_is_the_client_whatever_it_claims():
    assert xff("203.0.113.9", "198.51.100.1") == "203.0.113.9"
    assert fwd("203.0.113.9", "for=198.51.100.1") == "203.0.113.9"
    assert client_address("203.0.113.9", PROXIES, x_forwarded_for=["1.1.1.1"], forwarded=["for=2.2.2.2"]) \
        == "203.0.113.9"


def test_with_no_trusted_proxies_headers_are_always_ignored():
    assert xff("10.0.0.1", "198.51.100.1", trusted=()) == "10.0.0.1"
    assert xff("127.0.0.1", "198.51.100.1", trusted=parse_trusted_proxies([])) == "127.0.0.1"


def test_a_trusted_peer_without_header_is_the_client():
    assert xff("10.0.0.1") == "10.0.0.1"
    assert client_address("10.0.0.1", PROXIES) == "10.0.0.1"


def test_a_trusted_peer_names_the_client_in_x_forwarded_for():
    assert xff("10.0.0.1", "203.0.113.5") == "203.0.113.5"
    assert xff("fd00::1", "2001:db8::5") == "2001:db8::5"
    assert xff("192.0.2.7", "203.0.113.5:5555") == "203.0.113.5"


def test_prepended_addresses_cannot_spoof_the_client():
    # The client sent "X-Forwarded-For: 1.2.3.4"; the proxy appended the address it saw.
    assert xff("10.0.0.1", "1.2.3.4, 203.0.113.5") == "203.0.113.5"
    # The same, with the proxy adding its own header line (HAProxy's `option forwardfor`).
    assert xff("10.0.0.1", "1.2.3.4", "203.0.113.5") == "203.0.113.5"
    # The client claims to be a trusted proxy forwarding someone: still stops at the client.
    assert xff("10.0.0.1", "1.2.3.4, 10.0.0.2, 203.0.113.5") == "203.0.113.5"


def test_trusted_hops_are_skipped_from_the_right():
    assert xff("10.0.0.1", "203.0.113.5, 10.0.0.3, 10.0.0.2") == "203.0.113.5"
    assert xff("10.0.0.1", "198.51.100.1, 203.0.113.5, fd00::2, 10.0.0.2") == "203.0.113.5"


def test_every_hop_trusted_means_the_farthest_is_the_client():
    assert xff("10.0.0.1", "10.0.0.9, 10.0.0.2") == "10.0.0.9"


def test_a_broken_chain_before_the_client_is_not_believed():
    assert xff("10.0.0.1", "garbage") == "10.0.0.1"
    assert xff("10.0.0.1", "203.0.113.5, unknown") == "10.0.0.1"
    assert xff("10.0.0.1", "203.0.113.5, 10.0.0.2, _hidden, 10.0.0.3") == "10.0.0.1"
    assert xff("10.0.0.1", "") == "10.0.0.1"
    assert xff("10.0.0.1", " , ,") == "10.0.0.1"


def test_garbage_left_of_the_client_does_not_matter():
    assert xff("10.0.0.1", "garbage, 203.0.113.5") == "203.0.113.5"
    assert xff("10.0.0.1", '"; drop table, \x00\x01, 203.0.113.5') == "203.0.113.5"


def test_an_unclosed_quote_from_the_client_cannot_swallow_what_the_proxy_appended():
    # Proxies such as nginx append ", <peer>" to the client's own header line.
    assert xff("10.0.0.1", '"1.2.3.4, 203.0.113.5') == "203.0.113.5"
    assert fwd("10.0.0.1", 'for="[2001:db8::1, for=203.0.113.5') == "203.0.113.5"
    assert fwd("10.0.0.1", 'for="x\\", for=203.0.113.5') == "203.0.113.5"


def test_too_many_trusted_hops_are_not_believed():
    chain = ", ".join(["203.0.113.5"] + ["10.0.0.2"] * MAX_HOPS)
    assert xff("10.0.0.1", chain) == "10.0.0.1"
    chain = ", ".join(["203.0.113.5"] + ["10.0.0.2"] * (MAX_HOPS - 1))
    assert xff("10.0.0.1", chain) == "203.0.113.5"


def test_forwarded_rfc7239_forms():
    assert fwd("10.0.0.1", "for=192.0.2.43") == "192.0.2.43"
    assert fwd("10.0.0.1", 'For="[2001:db8:cafe::17]:4711"') == "2001:db8:cafe::17"
    assert fwd("10.0.0.1", 'for="[2001:db8:cafe::17]"') == "2001:db8:cafe::17"
    assert fwd("10.0.0.1", "for=192.0.2.60;proto=http;by=203.0.113.43") == "192.0.2.60"
    assert fwd("10.0.0.1", "proto=https; for=192.0.2.61") == "192.0.2.61"
    assert fwd("10.0.0.1", "for=192.0.2.43, for=198.51.100.17") == "198.51.100.17"
    assert fwd("10.0.0.1", "for=192.0.2.43", "for=198.51.100.17;by=10.0.0.1") == "198.51.100.17"
    assert fwd("10.0.0.1", 'for="198.51.100.17:80";host="a,b"') == "198.51.100.17"  # comma inside quotes


def test_forwarded_spoofing_and_garbage():
    assert fwd("10.0.0.1", "for=1.2.3.4, for=203.0.113.5") == "203.0.113.5"
    assert fwd("10.0.0.1", "for=203.0.113.5, for=10.0.0.2") == "203.0.113.5"
    assert fwd("10.0.0.1", "for=unknown") == "10.0.0.1"
    assert fwd("10.0.0.1", "for=_gazonk") == "10.0.0.1"
    assert fwd("10.0.0.1", "proto=https") == "10.0.0.1"  # an element without for=
    assert fwd("10.0.0.1", "for=203.0.113.5, by=10.0.0.2") == "10.0.0.1"
    assert fwd("10.0.0.1", 'for="[2001:db8::1') == "10.0.0.1"
    assert fwd("10.0.0.1", "for") == "10.0.0.1"


def test_x_forwarded_for_wins_over_forwarded():
    # The shipped HAProxy config appends X-Forwarded-For; a Forwarded header the client wrote is ignored.
    assert client_address("10.0.0.1", PROXIES, x_forwarded_for=["203.0.113.5"], forwarded=["for=1.2.3.4"]) \
        == "203.0.113.5"
    assert client_address("10.0.0.1", PROXIES, x_forwarded_for=[], forwarded=["for=1.2.3.4"]) == "1.2.3.4"


def test_peers_in_every_form():
    assert client_address(None, PROXIES) == "unknown"
    assert client_address("::ffff:10.0.0.1", PROXIES, x_forwarded_for=["203.0.113.5"]) == "203.0.113.5"
    assert client_address("::ffff:203.0.113.9", PROXIES) == "203.0.113.9"
    assert client_address("/run/ringcast.sock", PROXIES, x_forwarded_for=["203.0.113.5"]) == "/run/ringcast.sock"
    assert client_address("fd00::1", PROXIES, x_forwarded_for=["10.0.0.1, 2001:db8::9"]) == "2001:db8::9"


def test_a_trusted_ipv4_range_does_not_trust_ipv6_and_back():
    trusted = parse_trusted_proxies(["0.0.0.0/0"])
    assert xff("2001:db8::1", "203.0.113.5", trusted=trusted) == "2001:db8::1"
    trusted = parse_trusted_proxies(["::/0"])
    assert xff("10.0.0.1", "203.0.113.5", trusted=trusted) == "10.0.0.1"


# --- the per-IP limit key ---------------------------------------------------------------------


@pytest.mark.parametrize("address, key", [
    ("203.0.113.5", "203.0.113.5"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::1", "::/64"),
    ("::ffff:203.0.113.5", "203.0.113.5"),
    ("unknown", "unknown"),
])
def test_limit_keys(address, key):
    assert limit_key(address) == key


def test_one_ipv6_64_shares_one_key_and_neighbours_do_not():
    assert limit_key("2001:db8:aa:bb::1") == limit_key("2001:db8:aa:bb:ffff:ffff:ffff:ffff")
    assert limit_key("2001:db8:aa:bb::1") != limit_key("2001:db8:aa:bc::1")
