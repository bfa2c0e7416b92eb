"""Connection tokens: who a client is and which rooms it may join and publish to.

Owns verifying an HS256 JWT (PyJWT) against a set of signing keys named by
`kid` (several at once, so keys rotate without downtime), turning its claims
into an `Identity`, and the scope rules (`rooms` / `publish` glob patterns).
Everything here is pure: no sockets, no asyncio, no settings loading; the
caller passes the token text and the current time. It must not decide what
happens to a refused client (admission answers HTTP 401, the worker answers
FORBIDDEN).

Token rules (docs/security.md repeats them for token issuers):
- header `alg` must be HS256 (no `none`, no algorithm confusion);
- header `kid` names the key; it may be left out only while exactly one key is
  configured;
- claims: `sub` (non-empty string, shown to room members as the sender),
  `exp` (required), `rooms` and `publish` (lists of glob patterns; absent
  means none). `nbf` and `iat` are checked when present.
- times (`exp`, `nbf`, `iat`) are judged at the caller's `now` only, each with
  the configured leeway; PyJWT's own clock is not consulted.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key must be at least as long as the hash
MAX_SUB_CHARS = 128  # `sub` travels in every message the user publishes
MAX_PATTERNS = 256  # per claim; a token's scope stays cheap to check
MAX_PATTERN_CHARS = 256
MAX_TOKEN_CHARS = 4096  # longer is refused before any base64 or HMAC work
BEARER = "bearer "


class AuthError(Exception):
    """A token is missing, malformed, expired or badly signed: refuse with HTTP 401."""


@functools.lru_cache(maxsize=4096)  # bounded: patterns come from a few token templates
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified holder of a token, as long as its connection lives."""

    user: str
    rooms: tuple[str, ...]  # glob patterns of rooms it may join (and read history of)
    publish: tuple[str, ...]  # glob patterns of rooms it may publish to (joining is needed too)
    expires_at: float  # Unix seconds after which the token no longer verifies: `exp` plus the leeway

    def may_join(self, room: str) -> bool:
        return any(_compiled(pattern).match(room) for pattern in self.rooms)

    def may_publish(self, room: str) -> bool:
        return any(_compiled(pattern).match(room) for pattern in self.publish)


def parse_secrets(entries: list[str]) -> dict[str, bytes]:
    """`kid=secret` entries (flags or RINGCAST_JWT_SECRETS, comma-separated) -> {kid: key}.

    Raises ValueError on a malformed entry, a duplicate kid or a short secret.
    """
    keys: dict[str, bytes] = {}
    for entry in entries:
        kid, sep, secret = entry.partition("=")
        kid = kid.strip()
        if not sep or not kid:
            raise ValueError(f"a JWT secret is given as KID=SECRET, got {entry[:8]!r}...")
        if kid in keys:
            raise ValueError(f"JWT key id {kid!r} given twice")
        key = secret.encode()
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT secret of key {kid!r} is {len(key)} bytes; HS256 needs at least {MIN_SECRET_BYTES}")
        keys[kid] = key
    return keys


def token_from(authorization: str | None, query_token: str | None) -> str:
    """The token of an upgrade request: `Authorization: Bearer T` wins over `?token=T`."""
    if authorization is not None:
        if authorization[: len(BEARER)].lower() != BEARER:
            raise AuthError("Authorization must be `Bearer <token>`")
        token = authorization[len(BEARER):].strip()
    elif query_token is not None:
        token = query_token
    else:
        raise AuthError("no token: send `Authorization: Bearer <token>` or `?token=<token>`")
    if not token:
        raise AuthError("empty token")
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthError(f"token longer than {MAX_TOKEN_CHARS} characters")
    return token


class TokenVerifier:
    """Verifies tokens against the configured keys; one per worker, reused for every upgrade."""

    def __init__(self, keys: dict[str, bytes], leeway_s: float = 0.0) -> None:
        if not keys:
            raise ValueError("token verification needs at least one key")
        self.keys = dict(keys)
        self.leeway_s = leeway_s

    def verify(self, token: str, now: float) -> Identity:
        """The identity a token proves at Unix time `now`, or AuthError saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"token algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        if kid is None:
            if len(self.keys) != 1:
                raise AuthError("token has no `kid` and several keys are configured")
            key = next(iter(self.keys.values()))
        elif not isinstance(kid, str) or kid not in self.keys:
            raise AuthError("token signed with an unknown key id")
        else:
            key = self.keys[kid]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                # PyJWT would judge the times by its own clock; _times judges them at `now`.
                options={"require": ["exp", "sub"], "verify_aud": False,
                         "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad token signature") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        exp = _times(claims, now, self.leeway_s)
        return Identity(
            user=_subject(claims["sub"]),
            rooms=_patterns(claims.get("rooms"), "rooms"),
            publish=_patterns(claims.get("publish"), "publish"),
            expires_at=exp + self.leeway_s,  # the sweep tolerates the same skew as the upgrade
        )


def _times(claims: dict, now: float, leeway_s: float) -> float:
    """Check `exp`, and `nbf`/`iat` when present, at Unix time `now` with `leeway_s` of skew; returns `exp`."""
    exp, nbf, iat = (_seconds(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is None or exp + leeway_s <= now:  # (never None: jwt.decode requires it)
        raise AuthError("token expired")
    if nbf is not None and nbf - leeway_s > now:
        raise AuthError("token not valid yet (`nbf`)")
    if iat is not None and iat - leeway_s > now:
        raise AuthError("token issued in the future (`iat`)")
    return exp


def _seconds(claims: dict, name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise AuthError(f"`{name}` must be a finite number of Unix seconds")
    return float(value)


def _subject(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_SUB_CHARS:
        raise AuthError(f"`sub` must be a string of 1..{MAX_SUB_CHARS} characters")
    if not value.isprintable():
        raise AuthError("`sub` must not contain control characters")
    return value


def _patterns(value: object, claim: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_PATTERNS:
        raise AuthError(f"`{claim}` must be a list of at most {MAX_PATTERNS} glob patterns")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS:
            raise AuthError(f"`{claim}` patterns must be strings of 1..{MAX_PATTERN_CHARS} characters")
    return tuple(value)
