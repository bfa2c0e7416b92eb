"""Admission: whether an upgrade request may become a WebSocket, decided before the upgrade.

Owns the checks a worker runs on every `GET /ws` before it spends anything on
the socket, in this order (cheap, attacker-specific limits first; the limit
every client shares last, so only requests that would be admitted spend it):

1. refused upgrades of this address (token bucket per IP)     -> HTTP 429 + Retry-After
2. Origin allowlist (cross-site WebSocket hijacking)         -> HTTP 403 (a refusal of the address)
3. connections from this IP on this worker                    -> HTTP 429
4. the connection token, when auth is on (node.auth)          -> HTTP 401 (a refusal of the address)
5. new sockets per second on this worker (token bucket)       -> HTTP 503 + Retry-After

the per-IP count of open connections (held from admission until the socket
closes) and the bounded table of per-address refusal buckets. It is pure
bookkeeping: callers pass the request's facts and the current time, and get
back an `Admitted` or a `Refusal`. It must not touch aiohttp, sockets or the
connection's later life (rate limits of frames, room scopes: the worker and
node.auth).
"""

from __future__ import annotations

import collections
import fnmatch
import math
from dataclasses import dataclass

from node.auth import AuthError, Identity, TokenVerifier, token_from
from node.ratelimit import KeyedBuckets, TokenBucket


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer instead of the upgrade. `code` is the body's `error` (docs/protocol.md)."""

    status: int
    code: str
    message: str
    retry_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    identity: Identity | None  # None when auth is off


ORIGIN_NOT_ALLOWED = "ORIGIN_NOT_ALLOWED"
TOO_MANY_CONNECTIONS_FROM_IP = "TOO_MANY_CONNECTIONS_FROM_IP"
TOO_MANY_REFUSED_UPGRADES_FROM_IP = "TOO_MANY_REFUSED_UPGRADES_FROM_IP"
ACCEPT_RATE_EXCEEDED = "ACCEPT_RATE_EXCEEDED"
UNAUTHORIZED = "UNAUTHORIZED"


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin on a WebSocket upgrade; other clients may not.

    No Origin header: allowed (not a browser, so not a hijacked session).
    Empty allowlist: every Origin is allowed (the worker warns at start).
    Otherwise the Origin must match an entry exactly (case-insensitive) or one
    of its glob patterns (`https://*.example.com`); the literal `null` Origin of
    sandboxed pages is allowed only if `null` is listed.
    """
    if origin is None or not allowed:
        return True
    origin = origin.strip().lower()
    return any(fnmatch.fnmatchcase(origin, pattern.lower()) for pattern in allowed)


class Admission:
    """One per worker: the pre-upgrade checks, the per-IP count of open sockets and of refused upgrades.

    `refused_rate_per_s` / `refused_burst`: refusals (403, 401) an address may
    earn before all of its requests are refused with 429 until its bucket
    refills; `refused_max_ips` bounds the addresses remembered (LRU). A
    request refused for what it carries costs only its own address, never the
    worker's accept rate, which only requests about to be admitted spend.
    """

    def __init__(
        self,
        *,
        allowed_origins: tuple[str, ...],
        max_connections_per_ip: int,
        accept_rate_per_s: float,
        accept_burst: int,
        verifier: TokenVerifier | None,
        now: float,
        refused_rate_per_s: float = 1.0,
        refused_burst: int = 20,
        refused_max_ips: int = 10_000,
    ) -> None:
        self.allowed_origins = allowed_origins
        self.max_connections_per_ip = max_connections_per_ip
        self.accept_bucket = TokenBucket(accept_rate_per_s, accept_burst, now)
        self.refused = KeyedBuckets(refused_rate_per_s, refused_burst, refused_max_ips)
        self.verifier = verifier
        self.connections_per_ip: collections.Counter[str] = collections.Counter()

    def check(
        self, *, ip: str, origin: str | None, authorization: str | None, query_token: str | None,
        now_monotonic: float, now_unix: float,
    ) -> Admitted | Refusal:
        """Decide one upgrade request. Does not count it as open; call `opened` once it is admitted."""
        wait_s = self.refused.wait_s(ip, now_monotonic)
        if wait_s:
            return Refusal(
                429, TOO_MANY_REFUSED_UPGRADES_FROM_IP, "too many refused upgrade requests from this address",
                max(1, math.ceil(wait_s)),
            )
        if not origin_allowed(origin, self.allowed_origins):
            refusal = Refusal(403, ORIGIN_NOT_ALLOWED, "this Origin may not open WebSockets here")
            return self._refused(ip, now_monotonic, refusal)
        if self.connections_per_ip[ip] >= self.max_connections_per_ip:
            return Refusal(
                429, TOO_MANY_CONNECTIONS_FROM_IP, f"at most {self.max_connections_per_ip} connections per IP", 5
            )
        identity = None
        if self.verifier is not None:
            try:
                identity = self.verifier.verify(token_from(authorization, query_token), now_unix)
            except AuthError as exc:
                return self._refused(ip, now_monotonic, Refusal(401, UNAUTHORIZED, str(exc)))
        wait_s = self.accept_bucket.take(now_monotonic)
        if wait_s:
            return Refusal(
                503, ACCEPT_RATE_EXCEEDED, "this worker is accepting new sockets as fast as it allows",
                max(1, math.ceil(wait_s)),
            )
        return Admitted(identity)

    def _refused(self, ip: str, now: float, refusal: Refusal) -> Refusal:
        """Charge a refusal earned by what the request carries to its address."""
        self.refused.take(ip, now)
        return refusal

    def opened(self, ip: str) -> None:
        self.connections_per_ip[ip] += 1

    def closed(self, ip: str) -> None:
        self.connections_per_ip[ip] -= 1
        if self.connections_per_ip[ip] <= 0:
            del self.connections_per_ip[ip]
