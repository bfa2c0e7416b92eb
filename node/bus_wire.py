"""The bus wire format: one room message as bytes on a Redis channel and in a room's history.

Owns the only description of those bytes. The publish script of
node/bus_redis.py is built from the Lua fragments here, the subscriber's
payloads and the history entries are parsed here, and tests and Python paths
encode with `encode`. It must not do I/O, know Redis connections or channel
and key names (node/bus_redis.py owns those), or know what a body contains
(node/envelope.py does).

A channel message (the payload of one Redis PUBLISH) is

    <seq> SP <epoch> SP <body>

- `seq`: the message's position in its room's stream, in ASCII decimal
  digits with no sign and no leading zero: 1 to MAX_SEQ (Redis HINCRBY is a
  signed 64-bit counter), so at most 19 digits.
- `epoch`: the room's stream epoch, 1 to MAX_EPOCH_BYTES ASCII letters or
  digits. The publish script writes Redis TIME as seconds followed by the
  microseconds on 6 digits (e.g. `1718000000123456`); a reader must not rely
  on more than "letters or digits".
- `SP`: exactly one space (0x20).
- `body`: every remaining byte, possibly empty, possibly containing spaces,
  exactly as published (node/envelope.py bytes; the global-broadcast
  baseline, node/bus_global.py, puts its room tag at the front of it).

A history entry (one entry of a room's Redis stream) has the ID `<seq>-0`
(same `seq` as above, so stream order is sequence order and XRANGE can start
after a given seq) and one field, HISTORY_BODY_FIELD, holding the body. The
epoch is not repeated per entry: it is the room's, and the stream is
emptied when a new epoch starts.

`decode` and `decode_history_entry` raise MalformedBusMessage, saying what is
wrong, on anything else: a payload on a room channel can be PUBLISHed by
anyone with access to Redis, so a reader drops what it cannot parse.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

SEPARATOR = b" "
MAX_SEQ = 2**63 - 1  # the largest value of a Redis integer (HINCRBY)
MAX_SEQ_DIGITS = len(str(MAX_SEQ))  # 19
MAX_EPOCH_BYTES = 64  # the publish script writes 16; the bound keeps a hostile header small
HISTORY_BODY_FIELD = "b"  # the one field of a history stream entry
_HISTORY_BODY_FIELD = HISTORY_BODY_FIELD.encode()
_ZERO = ord("0")


class MalformedBusMessage(ValueError):
    """Bytes that are not a bus message in this format; the message says what is wrong."""


class WireMessage(NamedTuple):
    seq: int
    epoch: str
    body: bytes


def encode(seq: int, epoch: str, body: bytes) -> bytes:
    """The channel payload of one message (what the publish script PUBLISHes)."""
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be within [1, {MAX_SEQ}], got {seq}")
    _check_epoch(epoch.encode("ascii", "replace"))
    return b"%d %s %s" % (seq, epoch.encode("ascii"), body)


def decode(payload: bytes) -> WireMessage:
    """Parse one channel payload; raises MalformedBusMessage."""
    parts = payload.split(SEPARATOR, 2)
    if len(parts) != 3:
        raise MalformedBusMessage(f"expected '<seq> <epoch> <body>', got {len(parts) - 1} separator(s)")
    seq, epoch, body = parts
    return WireMessage(_parse_seq(seq), _check_epoch(epoch), body)


def decode_history_entry(entry_id: bytes, fields: Sequence[bytes]) -> tuple[int, bytes]:
    """The (seq, body) of one history stream entry as XRANGE returns it; raises MalformedBusMessage."""
    seq, dash, sub = entry_id.partition(b"-")
    if not dash or sub != b"0":
        raise MalformedBusMessage(f"history entry ID must be '<seq>-0', got {entry_id[:40]!r}")
    try:
        body = fields[list(fields[::2]).index(_HISTORY_BODY_FIELD) * 2 + 1]
    except (ValueError, IndexError):
        raise MalformedBusMessage(f"history entry {entry_id[:40]!r} has no {HISTORY_BODY_FIELD!r} field") from None
    return _parse_seq(seq), body


def _parse_seq(seq: bytes) -> int:
    if not seq.isdigit() or seq[0] == _ZERO or len(seq) > MAX_SEQ_DIGITS:
        raise MalformedBusMessage(f"seq must be a decimal integer >= 1 without sign or leading zero, got {seq[:40]!r}")
    value = int(seq)
    if value > MAX_SEQ:
        raise MalformedBusMessage(f"seq {value} is larger than {MAX_SEQ}")
    return value


def _check_epoch(epoch: bytes) -> str:
    if not epoch or len(epoch) > MAX_EPOCH_BYTES or not epoch.isalnum():
        raise MalformedBusMessage(f"epoch must be 1 to {MAX_EPOCH_BYTES} ASCII letters or digits, got {epoch[:80]!r}")
    return epoch.decode("ascii")


# --- the same format in Lua, for the scripts that write it ----------------------------
# Each function takes Lua expressions (variable names of the calling script) and
# returns a Lua expression; node/bus_redis.py splices them into its scripts.

def lua_payload(seq: str, epoch: str, body: str) -> str:
    """A Lua expression for the channel payload `<seq> <epoch> <body>`."""
    sep = SEPARATOR.decode()
    return f"{seq} .. '{sep}' .. {epoch} .. '{sep}' .. {body}"


def lua_history_entry_id(seq: str) -> str:
    """A Lua expression for the history stream entry ID of `seq`."""
    return f"{seq} .. '-0'"
