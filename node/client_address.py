"""Who the client is behind a proxy: the address a worker counts per-IP limits against.

Owns the trusted-proxy rules: parsing `--trusted-proxies` (IPv4 and IPv6
CIDRs), deciding the client address of a request from its TCP peer and its
`X-Forwarded-For` / `Forwarded` (RFC 7239) headers, and the per-IP limit key
(an IPv4 address as is, an IPv6 address's /64). It is pure: strings in,
strings out. It must not import aiohttp, read sockets or keep state; the
worker passes it the peer and the header values, and `node.admission` counts
whatever key it returns.

The rules (docs/security.md, "Behind a proxy"):

- From a peer that is not a trusted proxy, the headers are ignored: the peer
  is the client.
- From a trusted peer, the hops the headers name are walked from the right
  (the hop the trusted proxy itself added) to the left, skipping trusted
  proxies; the first address that is not a trusted proxy is the client. What
  a client writes into the header itself sits left of that and is never
  reached, so prepending cannot spoof an address. Every hop trusted: the
  leftmost one is the client.
- `X-Forwarded-For` is used when present, otherwise `Forwarded`: a proxy that
  sets only `Forwarded` must remove a client's `X-Forwarded-For`. Several
  header lines of one name are one list, in order.
- A hop that is not an address (`unknown`, an obfuscated `_name`, garbage, a
  `Forwarded` element without `for=`) reached before the client, or more than
  `MAX_HOPS` trusted hops: the header is not believed and the peer is the client.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 32  # trusted hops walked before a header is judged unbelievable (a real chain has a handful)
IPV6_LIMIT_PREFIX = 64  # one IPv6 subscriber usually gets a whole /64: counting per address would be no limit at all


def parse_trusted_proxies(entries: Iterable[str]) -> tuple[Network, ...]:
    """`--trusted-proxies` values (each may hold several, comma-separated) as networks.

    A bare address is its own /32 or /128. Raises ValueError naming the bad
    entry: not an address or CIDR, or host bits set (`10.1.2.3/8`: say `10.0.0.0/8`).
    """
    networks: list[Network] = []
    for entry in entries:
        for text in str(entry).split(","):
            text = text.strip()
            if not text:
                continue
            try:
                network = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                if "host bits set" in str(exc):
                    meant = ipaddress.ip_network(text, strict=False)
                    raise ValueError(f"trusted proxy {text!r} has host bits set: did you mean {meant}?") from None
                raise ValueError(
                    f"trusted proxy {text!r} is not an IPv4/IPv6 address or CIDR (like 10.0.0.0/8 or fd00::/8)"
                ) from None
            if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
                # Peers are compared as IPv4 once unmapped, so the mapped range must be too.
                mapped = network.network_address.ipv4_mapped
                network = ipaddress.ip_network(f"{mapped}/{max(0, network.prefixlen - 96)}", strict=False)
            networks.append(network)
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as a header or a socket names it, or None: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
    `[2001:db8::1]`, `[2001:db8::1]:80`, `"[2001:db8::1]:80"` (quoted, as in `Forwarded`). IPv4-mapped
    IPv6 becomes IPv4; an IPv6 zone (`%eth0`) is dropped."""
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
    elif text.count(":") == 1:  # IPv4 with a port
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
    else:
        host = text
    host = host.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)


def _split_list(values: Sequence[str], *, quotes: bool) -> list[str]:
    """Comma-separated list items over every header line, in order. With `quotes` (`Forwarded`), a comma
    inside a quoted string does not split; a line whose quotes do not balance is split on every comma,
    so an unclosed quote a client wrote cannot swallow the element a proxy appended to the same line."""
    items: list[str] = []
    for value in values:
        line: list[str] = []
        current: list[str] = []
        quoted = escaped = False
        for char in value if quotes else ():
            if escaped:
                escaped = False
            elif char == "\\" and quoted:
                escaped = True
            elif char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                line.append("".join(current))
                current = []
                continue
            current.append(char)
        if quotes and not quoted and not escaped:
            line.append("".join(current))
        else:
            line = value.split(",")
        items.extend(item.strip() for item in line)
    return [item for item in items if item]


def _forwarded_for(element: str) -> str | None:
    """The `for=` value of one `Forwarded` element (`for=1.2.3.4;proto=https;by=...`), or None."""
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "for":
            return value.strip()
    return None


def forwarded_hops(x_forwarded_for: Sequence[str], forwarded: Sequence[str]) -> list[str] | None:
    """The hops the headers name, leftmost (farthest) first, as raw text; None when neither is present."""
    if x_forwarded_for:
        return _split_list(x_forwarded_for, quotes=False)
    if forwarded:
        return [_forwarded_for(element) or "" for element in _split_list(forwarded, quotes=True)]
    return None


def client_address(
    peer: str | None, trusted: Sequence[Network], *,
    x_forwarded_for: Sequence[str] = (), forwarded: Sequence[str] = (),
) -> str:
    """The client's address as text: the peer's, or, when the peer is a trusted proxy, the one the
    headers name (rules in the module docstring). `peer` None or not an address (a Unix socket):
    returned as is ("unknown" for None), headers ignored."""
    if peer is None:
        return "unknown"
    peer_address = parse_address(peer)
    if peer_address is None:
        return peer
    if not trusted or not is_trusted(peer_address, trusted):
        return str(peer_address)
    hops = forwarded_hops(x_forwarded_for, forwarded)
    if not hops:
        return str(peer_address)
    walked = 0
    for raw in reversed(hops):
        hop = parse_address(raw)
        if hop is None:
            return str(peer_address)  # the chain breaks before the client: believe nothing of it
        if not is_trusted(hop, trusted):
            return str(hop)
        walked += 1
        if walked >= MAX_HOPS:
            return str(peer_address)
    return str(parse_address(hops[0]))  # every hop a trusted proxy: the farthest one is the client


def limit_key(address: str) -> str:
    """The key per-IP limits count `address` under: an IPv4 address as is, an IPv6 address's /64
    (`2001:db8:1:2::/64`), an IPv4-mapped IPv6 address as its IPv4 address; anything else as is."""
    parsed = parse_address(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, IPV6_LIMIT_PREFIX), strict=False))
    return str(parsed)
