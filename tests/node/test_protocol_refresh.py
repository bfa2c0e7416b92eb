"""The `refresh` client frame and the `refreshed` reply (node/protocol.py): pure, no sockets.

What a worker does with a refresh (verification, same `sub`, kept room scopes)
is tested against real workers in tests/security/test_token_refresh.py.
"""

from __future__ import annotations

import pytest

from node import protocol
from node.protocol import ErrorCode
from tests.node.test_protocol import CODECS, decode, refused


@pytest.mark.parametrize("codec", CODECS)
def test_a_refresh_frame_carries_its_token_and_id(codec):
    frame = decode({"type": "refresh", "token": "a.b.c", "id": 9}, codec)
    assert frame == protocol.Refresh("a.b.c", 9)


@pytest.mark.parametrize("token", [None, "", 42, ["a.b.c"], {"t": 1}, True])
def test_a_refresh_without_a_token_string_is_refused_with_its_id(token):
    obj = {"type": "refresh", "id": "r1"}
    if token is not None:
        obj["token"] = token
    error = refused(obj)
    assert (error.code, error.request_id) == (ErrorCode.INVALID_MESSAGE_FORMAT, "r1")


def test_refreshed_says_when_the_new_token_expires_and_echoes_the_id():
    assert protocol.refreshed(1_795_858_400.0, "r1") == {"type": "refreshed", "expiresAt": 1_795_858_400.0, "id": "r1"}
    assert protocol.refreshed(12.5) == {"type": "refreshed", "expiresAt": 12.5}


def test_the_refresh_error_codes_are_named_as_documented():
    for code in ("TOKEN_INVALID", "TOKEN_SUBJECT_MISMATCH", "TOKEN_SCOPE_LOST", "AUTH_DISABLED"):
        assert ErrorCode(code).value == code
