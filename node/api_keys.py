"""API keys of the HTTP API for backends: parsing them and checking a request's. No I/O.

Owns the `NAME=SECRET` syntax of `--api-key` (repeatable, or
RINGCAST_API_KEYS comma-separated, or TOML `api_key = [...]`), the minimum
secret length, and the check of an `Authorization: Bearer SECRET` header:
compared with `hmac.compare_digest` against every configured key (no early
exit on a match, so timing tells nothing about which key or how much of it
matched). Several keys exist for rotation: add the new one, move backends to
it, remove the old one.

A key's NAME is what logs, metrics and members see (`api:NAME` as a message's
sender); a SECRET never leaves this module: no repr, no log line, no error
message holds it. It must not know HTTP frameworks: `node.http_api` passes
the header in and gets a name (or an `ApiKeyRefused`) back.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

MIN_API_KEY_SECRET_CHARS = 32  # a backend secret is generated, never remembered: 32 random characters at least
API_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # shown to members as `api:NAME`
BEARER = "bearer "
SENDER_PREFIX = "api:"  # a message published over the HTTP API comes `from` api:NAME

# Refusal codes (docs/api.md); the HTTP status is 401 for each.
API_KEY_REQUIRED = "API_KEY_REQUIRED"  # no Authorization header, or not `Bearer <secret>`
API_KEY_INVALID = "API_KEY_INVALID"  # a Bearer secret that is no configured key's
API_DISABLED = "API_DISABLED"  # no API key is configured: the HTTP API refuses everyone (status 403)


class ApiKeyRefused(Exception):
    """The request's credentials are refused; `code` is one of the codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys: name -> secret (the secret never in a repr)."""

    secrets: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return sorted(self.secrets)

    @property
    def enabled(self) -> bool:
        return bool(self.secrets)

    def check(self, authorization: str | None) -> str:
        """The name of the key an `Authorization` header carries; ApiKeyRefused otherwise."""
        if not self.secrets:
            raise ApiKeyRefused(API_DISABLED, "the HTTP API is off on this worker: no --api-key is configured")
        if authorization is None or authorization[: len(BEARER)].lower() != BEARER:
            raise ApiKeyRefused(API_KEY_REQUIRED, "send `Authorization: Bearer <api key secret>`")
        offered = authorization[len(BEARER):].strip().encode()
        matched = None
        for name, secret in self.secrets.items():  # every key compared, whatever matches
            if hmac.compare_digest(offered, secret) and matched is None:
                matched = name
        if matched is None:
            raise ApiKeyRefused(API_KEY_INVALID, "the API key is not valid")
        return matched


def parse_api_keys(entries: list[str]) -> ApiKeys:
    """`NAME=SECRET` entries -> ApiKeys; ValueError (naming the entry by its NAME only) when malformed."""
    keys: dict[str, bytes] = {}
    for entry in entries:
        name, sep, secret = entry.partition("=")
        name = name.strip()
        if not sep or not API_KEY_NAME.match(name):
            raise ValueError("an API key is given as NAME=SECRET, NAME of 1-64 characters A-Z a-z 0-9 _ . -")
        if name in keys:
            raise ValueError(f"API key name {name!r} given twice")
        secret = secret.strip()
        if len(secret) < MIN_API_KEY_SECRET_CHARS:
            raise ValueError(
                f"API key {name!r}: its secret has {len(secret)} characters; at least {MIN_API_KEY_SECRET_CHARS}"
            )
        if any(not "!" <= char <= "~" or char == "," for char in secret):
            raise ValueError(f"API key {name!r}: its secret must be printable ASCII without spaces or commas")
        keys[name] = secret.encode()
    secrets = list(keys.values())
    if len(set(secrets)) != len(secrets):
        raise ValueError("two API keys have the same secret")
    return ApiKeys(keys)
