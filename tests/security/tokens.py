"""Connection tokens for the security tests, signed the way an issuer would (PyJWT, HS256).

Shared by tests/security/*; never copy it.
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
    exp_in_s: float = 600, kid: str | None = "same", **extra: Any,
) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time() + exp_in_s), **extra}
    if rooms is not None:
        claims["rooms"] = rooms if isinstance(rooms, str) else list(rooms)
    if publish is not None:
        claims["publish"] = publish if isinstance(publish, str) else list(publish)
    headers = {} if kid is None else {"kid": key[0] if kid == "same" else kid}
    return jwt.encode(claims, key[1], algorithm="HS256", headers=headers)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}
