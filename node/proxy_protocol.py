"""PROXY protocol v2: the client address a TCP proxy (HAProxy `send-proxy-v2`) puts before the stream.

Owns the binary header (parsing and validating it, sans-I/O: `parse` takes
bytes and says "need more", "this is the header" or "this is not one") and
the listener that puts it in front of aiohttp: `listen` accepts connections,
and from a trusted proxy reads the header first (within a deadline; a
connection without a valid one is cut, nothing answered), then hands the
rest of the stream to aiohttp's protocol with the header's source address as
the peer, so `request.remote` is the client. A connection from any other
peer goes to aiohttp untouched (a header it sends is just bad HTTP). It must
not know HTTP, admission or the worker; which peers are trusted is
`node.client_address`'s parsing, done by the caller.

Version 1 (the text form) is not accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Sequence

from node.client_address import Network, is_trusted, parse_address

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_BYTES = 16  # signature, version/command, family/protocol, length
MAX_HEADER_BYTES = FIXED_BYTES + 1024  # addresses and TLVs; HAProxy's (with SSL and unique-id TLVs) fit well within
LOCAL, PROXY = 0x0, 0x1
AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX = 0x0, 0x1, 0x2, 0x3
STREAM = 0x1


class ProxyProtocolError(ValueError):
    """The bytes cannot be (the start of) a PROXY protocol v2 header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes the header takes at the start of the stream
    source: tuple[str, int] | None  # the client's (address, port); None: keep the TCP peer (LOCAL, UNSPEC, UNIX)


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None while more bytes are needed.

    Raises ProxyProtocolError when `data` does not start a valid v2 header: wrong signature,
    version other than 2, unknown command or family, a datagram protocol, an address block too
    short for its family, or a header longer than MAX_HEADER_BYTES.
    """
    head = data[:len(SIGNATURE)]
    if head != SIGNATURE[:len(head)]:
        raise ProxyProtocolError("the connection does not start with a PROXY protocol v2 signature")
    if len(data) < FIXED_BYTES:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"PROXY protocol version {version}; only 2 is accepted")
    if command not in (LOCAL, PROXY):
        raise ProxyProtocolError(f"unknown PROXY protocol command {command:#x}")
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = FIXED_BYTES + int.from_bytes(data[14:16], "big")
    if length > MAX_HEADER_BYTES:
        raise ProxyProtocolError(f"PROXY protocol header of {length} bytes; at most {MAX_HEADER_BYTES} accepted")
    if len(data) < length:
        return None
    if command == LOCAL:
        return ProxyHeader(length, None)  # the proxy's own connection (a health check): its address stands
    if family in (AF_UNSPEC, AF_UNIX):
        return ProxyHeader(length, None)  # nothing an IP limit could count: the spec says use the real peer
    if family not in (AF_INET, AF_INET6):
        raise ProxyProtocolError(f"unknown PROXY protocol address family {family:#x}")
    if transport != STREAM:
        raise ProxyProtocolError(f"PROXY protocol transport {transport:#x} is not a stream")
    size = 4 if family == AF_INET else 16
    block = data[FIXED_BYTES:length]
    if len(block) < 2 * size + 4:
        raise ProxyProtocolError(f"PROXY protocol address block of {len(block)} bytes is too short for its family")
    address = ipaddress.ip_address(block[:size])
    port = int.from_bytes(block[2 * size:2 * size + 2], "big")
    return ProxyHeader(length, (str(address), port))


class ProxiedTransport(asyncio.Transport):
    """The real transport, except that its `peername` is the client the PROXY header named."""

    def __init__(self, transport: asyncio.Transport, peername: tuple[str, int]) -> None:
        super().__init__()
        self._transport = transport
        self._peername = peername
        # The hot paths, bound once: the worker writes every frame through here.
        self.write = transport.write
        self.writelines = transport.writelines
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.is_closing = transport.is_closing

    def get_extra_info(self, name: str, default=None):
        if name == "peername":
            return self._peername
        return self._transport.get_extra_info(name, default)

    def abort(self) -> None:
        self._transport.abort()

    def close(self) -> None:
        self._transport.close()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self._transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class ProxyProtocolGate(asyncio.Protocol):
    """One accepted connection until it is handed to the real protocol (`inner_factory()`)."""

    def __init__(self, inner_factory: Callable[[], asyncio.Protocol], trusted: Sequence[Network],
                 header_timeout_s: float) -> None:
        self.inner_factory = inner_factory
        self.trusted = trusted
        self.header_timeout_s = header_timeout_s
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        address = parse_address(str(peer[0])) if isinstance(peer, (tuple, list)) and peer else None
        if address is None or not is_trusted(address, self.trusted):
            self._hand_over(transport, b"")  # not a proxy: no header expected
            return
        self.timer = asyncio.get_running_loop().call_later(self.header_timeout_s, transport.abort)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        try:
            header = parse(self.buffer)
        except ProxyProtocolError:
            self._cut()
            return
        if header is None:
            return
        rest, self.buffer = self.buffer[header.length:], b""
        transport: asyncio.Transport = self.transport
        if header.source is not None:
            transport = ProxiedTransport(self.transport, header.source)
        self._hand_over(transport, rest)

    def _hand_over(self, transport: asyncio.Transport, rest: bytes) -> None:
        assert self.transport is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        inner = self.inner_factory()
        self.transport.set_protocol(inner)  # from now on the real transport calls aiohttp's protocol directly
        inner.connection_made(transport)
        if rest:
            inner.data_received(rest)

    def _cut(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        self._cut()  # the proxy closed before a whole header: nothing to serve
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def listen(protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int, *,
                 trusted: Sequence[Network], header_timeout_s: float, backlog: int = 128,
                 reuse_address: bool = True) -> asyncio.AbstractServer:
    """Listen on host:port; connections from `trusted` peers must start with a v2 header (read within
    `header_timeout_s`), others are served as they are. `protocol_factory` is aiohttp's
    (`web.AppRunner.server`). The caller closes the returned server before cleaning up the runner."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: ProxyProtocolGate(protocol_factory, trusted, header_timeout_s),
        host, port, backlog=backlog, reuse_address=reuse_address, family=socket.AF_UNSPEC,
    )
