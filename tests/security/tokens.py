"""Connection tokens for the security tests, signed the way an issuer would (PyJWT, HS256).

Mint tokens inside the test that uses them, never at import or collection
time: a token's `exp` counts from when it was minted, and a suite that runs
longer than its lifetime would fail for no reason. Shared by tests/security/*;
never copy it.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

KEY1 = ("k1", "first-signing-key-0123456789abcdef")
KEY2 = ("k2", "second-signing-key-0123456789abcdef")


def flag(key: tuple[str, str]) -> str:
    return f"{key[0]}={key[1]}"


def token(
    key: tuple[str, str] = KEY1, sub: str = "alice", rooms: Any = ("*",), publish: Any = ("*",),
    exp_in_s: float = 600, kid: str | None = "same", at: float | None = None, **extra: Any,
) -> str:
    """A token expiring `exp_in_s` after Unix time `at` (default: now); `extra` claims (`nbf`, `iat`) as given.

    The default lifetime (10 minutes) is generous for any one test; pass `at`
    to mint against a fixed clock for TokenVerifier, whose time is a parameter.
    """
    minted_at = time.time() if at is None else at
    claims: dict[str, Any] = {"sub": sub, "exp": int(minted_at + exp_in_s), **extra}
    if rooms is not None:
        claims["rooms"] = rooms if isinstance(rooms, str) else list(rooms)
    if publish is not None:
        claims["publish"] = publish if isinstance(publish, str) else list(publish)
    headers = {} if kid is None else {"kid": key[0] if kid == "same" else kid}
    return jwt.encode(claims, key[1], algorithm="HS256", headers=headers)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}
