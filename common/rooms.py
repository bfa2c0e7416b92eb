"""The room-name rule, the one place it is written. No I/O.

Owns what a room name may be: a non-empty string of at most
`max_room_name_chars` characters from ROOM_NAME_CHARSET. The wire protocol
(`node.protocol`) and the route answers (`router.answers`) both check names
with `check_room_name`, so a name the router accepts is one a worker accepts.
It must not know error frames or HTTP (its callers turn InvalidRoomName into
their own answer: the INVALID_ROOM error code in both).
"""

from __future__ import annotations

import re
from typing import Any

ROOM_NAME_CHARSET = "A-Z a-z 0-9 and _ - . : @ / # = +"
_ROOM_NAME_CHARS = re.compile(r"[A-Za-z0-9_\-.:@/#=+]+")
DEFAULT_MAX_ROOM_NAME_CHARS = 128


class InvalidRoomName(ValueError):
    """The name breaks the rule; the message says which part."""


def check_room_name(value: Any, max_chars: int = DEFAULT_MAX_ROOM_NAME_CHARS) -> str:
    """`value` if it is a valid room name, else InvalidRoomName."""
    if not isinstance(value, str) or not value:
        raise InvalidRoomName("`room` must be a non-empty string")
    if len(value) > max_chars:
        raise InvalidRoomName(f"room name longer than {max_chars} characters")
    if not _ROOM_NAME_CHARS.fullmatch(value):
        raise InvalidRoomName(f"room name may only use {ROOM_NAME_CHARSET}")
    return value
