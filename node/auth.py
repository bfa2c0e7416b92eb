"""Connection tokens: who a client is and which rooms it may join and publish to.

Owns verifying a JWT (PyJWT) against the keys that may sign it, turning its
claims into an `Identity`, and the scope rules (`rooms` / `publish` glob
patterns). Two kinds of keys, named by `kid` (several at once, so keys rotate
without downtime): HS256 secrets shared with the issuer, and RS256/ES256
public keys published by the issuer as a JWKS document at a URL.

`TokenVerifier.verify` is pure and synchronous: no sockets, no asyncio, no
settings loading; the caller passes the token text and the current time, and
only keys already in hand are used. The one piece of I/O is `JwksSource`: the
worker awaits `TokenVerifier.prepare` before `verify` at an upgrade, which
fetches the JWKS document when the token names a key not cached yet or the
cache is due a refresh, within a timeout and at a bounded rate; all caching
decisions are `JwksKeys`', which is pure (time is a parameter). Nothing here
decides what happens to a refused client (admission answers HTTP 401, the
worker answers FORBIDDEN).

Token rules (docs/security.md repeats them for token issuers):
- header `alg`: HS256 (verified with a configured secret), RS256 or ES256
  (verified with a JWKS key whose type and `alg` match it); nothing else, so
  no `none` and no algorithm confusion: the algorithm picks the kind of key
  before the `kid` picks the key;
- header `kid` names the key; an HS256 token may leave it out only while
  exactly one secret is configured; an RS256/ES256 token must carry it;
- claims: `sub` (non-empty string without glob characters, shown to room
  members as the sender), `exp` (required), `rooms` and `publish` (lists of
  glob patterns; absent means none), `info` (optional: any JSON value of at
  most MAX_INFO_BYTES encoded, shown with the user in presence answers and
  presence_diff events). `nbf` and `iat` are checked when present;
  `aud` and `iss` when an audience / issuer is configured (then required).
- times (`exp`, `nbf`, `iat`) are judged at the caller's `now` only, each with
  the configured leeway; PyJWT's own clock is not consulted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
import jwt
import orjson

log = logging.getLogger("ringcast.auth")

HMAC_ALGORITHM = "HS256"  # verified with a shared secret
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")  # verified with a JWKS public key of the same algorithm
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key must be at least as long as the hash
MIN_RSA_KEY_BITS = 2048  # RFC 7518 3.3: smaller RSA keys are refused when the JWKS is loaded
MAX_SUB_CHARS = 128  # `sub` travels in every message the user publishes
# Issuers build scopes from `sub` (`user:{sub}:*`): a `sub` holding a glob character
# would turn such a template into a wildcard, so a token with one is refused.
GLOB_CHARACTERS = "*?[]"
MAX_PATTERNS = 256  # per claim; a token's scope stays cheap to check
MAX_PATTERN_CHARS = 256
MAX_TOKEN_CHARS = 4096  # longer is refused before any base64 or HMAC work
MAX_INFO_BYTES = 256  # the `info` claim as JSON: each presence entry (Redis) and presence answer carries it
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
    info: object = None  # the token's `info` claim (client info shown in presence), JSON, at most MAX_INFO_BYTES

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


@dataclass(frozen=True, slots=True)
class JwksSettings:
    """Where the issuer's public keys are and every bound on fetching them (`--jwt-jwks-*`)."""

    url: str  # http(s) URL of a JWKS document ({"keys": [JWK, ...]})
    timeout_s: float = 5.0  # one fetch, connect to last byte; an upgrade waiting on it waits no longer
    refresh_interval_s: float = 300.0  # keys older than this are fetched again by the next upgrade
    min_refetch_interval_s: float = 30.0  # fewest seconds between two fetch attempts, whatever tokens ask for
    max_keys: int = 16  # keys kept from one document; later ones are ignored
    max_bytes: int = 64 * 1024  # a larger document is a failed fetch


class JwksError(Exception):
    """A JWKS fetch or document failed; the keys already cached stay in use."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    algorithm: str  # "RS256" or "ES256": the only algorithm this key verifies
    key: object  # a `cryptography` public key


@dataclass
class JwksKeys:
    """The cached keys of one JWKS URL, and when to fetch them again. Pure: time is a parameter (monotonic s).

    The document replaces the cache on every successful load, so the cache
    never holds more than `max_keys` keys; a failed fetch keeps the old keys.
    """

    settings: JwksSettings
    keys: dict[str, PublicKey] = field(default_factory=dict)
    loaded_at: float | None = None  # last successful load
    attempted_at: float | None = None  # last fetch started (successful or not)
    last_error: str | None = None  # why the last fetch failed; None after a success
    ignored: list[str] = field(default_factory=list)  # why keys of the last document were left out

    def wants_fetch(self, kid: str | None, now: float) -> bool:
        """Whether a token naming `kid` should fetch the document now (at most once per min_refetch_interval_s)."""
        if self.attempted_at is not None and now - self.attempted_at < self.settings.min_refetch_interval_s:
            return False
        if self.loaded_at is None or now - self.loaded_at >= self.settings.refresh_interval_s:
            return True
        return kid is not None and kid not in self.keys

    def started(self, now: float) -> None:
        self.attempted_at = now

    def failed(self, reason: str) -> None:
        self.last_error = reason

    def load(self, document: bytes, now: float) -> None:
        """Replace the keys with the usable ones of a JWKS document; JwksError if it is not one."""
        if len(document) > self.settings.max_bytes:
            raise JwksError(f"JWKS document larger than {self.settings.max_bytes} bytes")
        try:
            parsed = orjson.loads(document)
        except orjson.JSONDecodeError:
            raise JwksError("JWKS document is not JSON") from None
        entries = parsed.get("keys") if isinstance(parsed, dict) else None
        if not isinstance(entries, list):
            raise JwksError("JWKS document has no `keys` list")
        keys: dict[str, PublicKey] = {}
        ignored: list[str] = []
        for entry in entries:
            if len(keys) >= self.settings.max_keys:
                ignored.append(f"keys past the first {self.settings.max_keys} usable ones")
                break
            kid, key, why = _public_key(entry)
            if key is None or kid in keys:
                ignored.append(why or f"duplicate kid {kid!r}")
            else:
                keys[kid] = key
        self.keys, self.ignored = keys, ignored
        self.loaded_at, self.last_error = now, None


def _public_key(entry: object) -> tuple[str, PublicKey | None, str]:
    """(kid, key or None, why it is not usable) for one JWK of a JWKS document."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not entry["kid"]:
        return "", None, "a key without a `kid`"
    kid = entry["kid"]
    if entry.get("use", "sig") != "sig":
        return kid, None, f"key {kid!r} is not for signatures"
    if entry.get("kty") not in ("RSA", "EC"):  # never "oct": a shared secret does not belong in a public document
        return kid, None, f"key {kid!r} is not an RSA or EC key"
    try:
        jwk = jwt.PyJWK(entry)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return kid, None, f"key {kid!r} is malformed"
    if jwk.algorithm_name not in PUBLIC_KEY_ALGORITHMS:
        return kid, None, f"key {kid!r} is for {jwk.algorithm_name}, not {' or '.join(PUBLIC_KEY_ALGORITHMS)}"
    if entry["kty"] == "RSA" and jwk.key.key_size < MIN_RSA_KEY_BITS:
        return kid, None, f"RSA key {kid!r} has fewer than {MIN_RSA_KEY_BITS} bits"
    return kid, PublicKey(jwk.algorithm_name, jwk.key), ""


async def fetch_jwks(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """GET a JWKS document: JwksError unless it answers 200 with at most `max_bytes` within `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
                async with session.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as answer:
                    if answer.status != 200:
                        raise JwksError(f"JWKS URL answered HTTP {answer.status}")
                    body = bytearray()
                    async for chunk in answer.content.iter_chunked(16 * 1024):
                        body += chunk
                        if len(body) > max_bytes:
                            raise JwksError(f"JWKS document larger than {max_bytes} bytes")
                    return bytes(body)
    except TimeoutError:
        raise JwksError(f"JWKS URL did not answer within {timeout_s} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise JwksError(f"JWKS URL unreachable ({type(exc).__name__}: {exc})") from None


class JwksSource:
    """Keeps a `JwksKeys` filled from its URL. One fetch at a time; every caller that needs it waits for that one."""

    def __init__(
        self, settings: JwksSettings, fetch: Callable[[str, float, int], Awaitable[bytes]] = fetch_jwks
    ) -> None:
        self.keys = JwksKeys(settings)
        self._fetch = fetch
        self._inflight: asyncio.Future | None = None

    async def prepare(self, kid: str | None, now: float) -> None:
        """Make the key `kid` available if a fetch is due (or running) and may bring it. Never raises.

        The caller that starts a fetch waits for it, and so does every caller
        whose `kid` is not cached while it runs; callers whose key is cached
        do not wait. The wait is bounded by `timeout_s`.
        """
        if self._inflight is None and self.keys.wants_fetch(kid, now):
            self.keys.started(now)
            self._inflight = asyncio.ensure_future(self._fetch_and_load(now))
            await asyncio.shield(self._inflight)
        elif self._inflight is not None and (kid is None or kid not in self.keys.keys):
            await asyncio.shield(self._inflight)  # shielded: a client that leaves does not cancel it for others

    async def _fetch_and_load(self, now: float) -> None:
        settings = self.keys.settings
        try:
            self.keys.load(await self._fetch(settings.url, settings.timeout_s, settings.max_bytes), now)
        except JwksError as exc:
            self.keys.failed(str(exc))
        except Exception as exc:  # a caller at the upgrade must get a 401, never this exception
            self.keys.failed(f"JWKS fetch failed ({type(exc).__name__}: {exc})")
        finally:
            self._inflight = None
        if self.keys.last_error is not None:
            log.warning("JWKS %s: %s; keeping %d cached keys", settings.url, self.keys.last_error, len(self.keys.keys))
        else:
            log.info("JWKS %s: %d keys loaded (kids %s)", settings.url, len(self.keys.keys), sorted(self.keys.keys))
            for why in self.keys.ignored:
                log.warning("JWKS %s: ignored %s", settings.url, why)


class TokenVerifier:
    """Verifies tokens against the configured keys; one per worker, reused for every upgrade.

    `secrets`: HS256 keys by kid (may be empty when a JWKS source is given).
    `audience` / `issuer`: when set, a token's `aud` must name the audience
    (a string equal to it, or a list holding it) and its `iss` must equal the
    issuer; absent claims are refused.
    """

    def __init__(
        self, secrets: dict[str, bytes], leeway_s: float = 0.0, *, audience: str | None = None,
        issuer: str | None = None, jwks: JwksSource | None = None,
    ) -> None:
        if not secrets and jwks is None:
            raise ValueError("token verification needs at least one secret or a JWKS URL")
        self.keys = dict(secrets)
        self.leeway_s = leeway_s
        self.audience = audience or None
        self.issuer = issuer or None
        self.jwks = jwks
        self.algorithms = ((HMAC_ALGORITHM,) if secrets else ()) + (PUBLIC_KEY_ALGORITHMS if jwks else ())

    async def prepare(self, authorization: str | None, query_token: str | None, now_monotonic: float) -> None:
        """Before `verify` at an upgrade: fetch the JWKS keys the request's token needs, if due. Never raises.

        Returns at once for HS256-only verifiers, for tokens that are not
        RS256/ES256, and while the keys are cached and fresh.
        """
        if self.jwks is None:
            return
        try:
            header = jwt.get_unverified_header(token_from(authorization, query_token))
        except (AuthError, jwt.PyJWTError):
            return  # verify() says what is wrong with it
        kid = header.get("kid")
        if header.get("alg") in PUBLIC_KEY_ALGORITHMS and isinstance(kid, str):
            await self.jwks.prepare(kid, now_monotonic)

    def verify(self, token: str, now: float) -> Identity:
        """The identity a token proves at Unix time `now`, or AuthError saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise AuthError(f"token algorithm must be {' or '.join(self.algorithms)}")
        key = self._secret(header.get("kid")) if algorithm == HMAC_ALGORITHM else self._public_key(header, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                # PyJWT would judge the times by its own clock; _times judges them at `now`.
                # `aud` and `iss` are judged by _audience_and_issuer.
                options={"require": ["exp", "sub"], "verify_aud": False, "verify_iss": False,
                         "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad token signature") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        exp = _times(claims, now, self.leeway_s)
        self._audience_and_issuer(claims)
        return Identity(
            user=_subject(claims["sub"]),
            rooms=_patterns(claims.get("rooms"), "rooms"),
            publish=_patterns(claims.get("publish"), "publish"),
            info=_info(claims.get("info")),
            expires_at=exp + self.leeway_s,  # the sweep tolerates the same skew as the upgrade
        )

    def _secret(self, kid: object) -> bytes:
        if kid is None:
            if len(self.keys) != 1:
                raise AuthError("token has no `kid` and several keys are configured")
            return next(iter(self.keys.values()))
        if not isinstance(kid, str) or kid not in self.keys:
            raise AuthError("token signed with an unknown key id")
        return self.keys[kid]

    def _public_key(self, header: dict, algorithm: str) -> object:
        assert self.jwks is not None  # (algorithm is in self.algorithms)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError(f"a {algorithm} token must name its key (`kid`)")
        cached = self.jwks.keys.keys.get(kid)
        if cached is None:
            # The cause (and the JWKS URL) is in the worker's log, not in the answer to an unauthenticated client.
            unavailable = self.jwks.keys.last_error is not None
            raise AuthError("token signed with an unknown key id" + (" (the issuer's keys could not be fetched)" if unavailable else ""))
        if cached.algorithm != algorithm:
            raise AuthError(f"token algorithm {algorithm} does not match its key's ({cached.algorithm})")
        return cached.key

    def _audience_and_issuer(self, claims: dict) -> None:
        if self.audience is not None:
            aud = claims.get("aud")
            if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
                raise AuthError(f"token `aud` does not name this service ({self.audience!r})")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise AuthError(f"token `iss` is not {self.issuer!r}")


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


def _info(value: object) -> object:
    """The `info` claim if it is JSON of at most MAX_INFO_BYTES, else AuthError (None when absent)."""
    if value is None:
        return None
    try:
        size = len(orjson.dumps(value))
    except TypeError:
        raise AuthError("`info` must be JSON") from None
    if size > MAX_INFO_BYTES:
        raise AuthError(f"`info` is {size} bytes as JSON; at most {MAX_INFO_BYTES}")
    return value


def _subject(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_SUB_CHARS:
        raise AuthError(f"`sub` must be a string of 1..{MAX_SUB_CHARS} characters")
    if not value.isprintable():
        raise AuthError("`sub` must not contain control characters")
    if any(char in value for char in GLOB_CHARACTERS):
        raise AuthError(f"`sub` must not contain glob characters ({' '.join(GLOB_CHARACTERS)})")
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
