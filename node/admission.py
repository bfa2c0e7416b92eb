"""Admission: whether an upgrade request may become a WebSocket, decided before the upgrade.

Owns the checks a worker runs on every `GET /ws` before it spends anything on
the socket, in this order (cheapest and most specific first):

1. Origin allowlist (cross-site WebSocket hijacking)         -> HTTP 403
2. connections from this IP on this worker                    -> HTTP 429
3. new sockets per second on this worker (token bucket)       -> HTTP 503 + Retry-After
4. the connection token, when auth is on (node.auth)          -> HTTP 401

and the per-IP count of open connections (held from admission until the
socket closes). It is pure bookkeeping: callers pass the request's facts and
the current time, and get back an `Admitted` or a `Refusal`. It must not
touch aiohttp, sockets or the connection's later life (rate limits of
frames, room scopes: the worker and node.auth).
"""

from __future__ import annotations

import collections
import fnmatch
import math
from dataclasses import dataclass

from node.auth import AuthError, Identity, TokenVerifier, token_from
from node.ratelimit import TokenBucket


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
    """One per worker: the pre-upgrade checks and the per-IP count of open sockets."""

    def __init__(
        self,
        *,
        allowed_origins: tuple[str, ...],
        max_connections_per_ip: int,
        accept_rate_per_s: float,
        accept_burst: int,
        verifier: TokenVerifier | None,
        now: float,
    ) -> None:
        self.allowed_origins = allowed_origins
        self.max_connections_per_ip = max_connections_per_ip
        self.accept_bucket = TokenBucket(accept_rate_per_s, accept_burst, now)
        self.verifier = verifier
        self.connections_per_ip: collections.Counter[str] = collections.Counter()

    def check(
        self, *, ip: str, origin: str | None, authorization: str | None, query_token: str | None,
        now_monotonic: float, now_unix: float,
    ) -> Admitted | Refusal:
        """Decide one upgrade request. Does not count it; call `opened` once it is admitted."""
        if not origin_allowed(origin, self.allowed_origins):
            return Refusal(403, ORIGIN_NOT_ALLOWED, "this Origin may not open WebSockets here")
        if self.connections_per_ip[ip] >= self.max_connections_per_ip:
            return Refusal(
                429, TOO_MANY_CONNECTIONS_FROM_IP, f"at most {self.max_connections_per_ip} connections per IP", 5
            )
        wait_s = self.accept_bucket.take(now_monotonic)
        if wait_s:
            return Refusal(
                503, ACCEPT_RATE_EXCEEDED, "this worker is accepting new sockets as fast as it allows",
                max(1, math.ceil(wait_s)),
            )
        if self.verifier is None:
            return Admitted(None)
        try:
            token = token_from(authorization, query_token)
            return Admitted(self.verifier.verify(token, now_unix))
        except AuthError as exc:
            return Refusal(401, UNAUTHORIZED, str(exc))

    def opened(self, ip: str) -> None:
        self.connections_per_ip[ip] += 1

    def closed(self, ip: str) -> None:
        self.connections_per_ip[ip] -= 1
        if self.connections_per_ip[ip] <= 0:
            del self.connections_per_ip[ip]
