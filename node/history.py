"""Room history policy: how many messages a room keeps, and for how long. No I/O.

Owns the rules that map a room name to its history bound (size and TTL), by
longest matching name prefix, e.g. `chat:*=1000:600` keeps 1,000 messages for
10 minutes in every `chat:` room and `cursor:*=0:0` keeps none (cursor moves
are worthless a second later, so they are only published). The bus applies
the policy; this module only parses and resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    size: int  # messages kept; 0 keeps no history (resume cannot recover that room)
    ttl_s: int  # seconds the history lives after the room's last message


class HistoryRules:
    def __init__(self, default: HistoryPolicy, rules: list[str]) -> None:
        self.default = default
        parsed: list[tuple[str, HistoryPolicy]] = []
        for rule in rules:
            parsed.append(parse_rule(rule))
        # longest prefix first, so "chat:vip:*" wins over "chat:*"
        self._rules = sorted(parsed, key=lambda item: len(item[0]), reverse=True)

    def policy_for(self, room: str) -> HistoryPolicy:
        for prefix, policy in self._rules:
            if room.startswith(prefix):
                return policy
        return self.default


def parse_rule(rule: str) -> tuple[str, HistoryPolicy]:
    """Parse `PREFIX*=SIZE:TTL_S` (the `*` is required: rules match prefixes)."""
    pattern, sep, bound = rule.partition("=")
    size_text, sep2, ttl_text = bound.partition(":")
    if not sep or not sep2 or not pattern.endswith("*") or "*" in pattern[:-1]:
        raise ValueError(f"history rule {rule!r} is not PREFIX*=SIZE:TTL_S (e.g. chat:*=1000:600)")
    try:
        size, ttl_s = int(size_text), int(ttl_text)
    except ValueError:
        raise ValueError(f"history rule {rule!r}: SIZE and TTL_S must be integers") from None
    if size < 0 or ttl_s < 0 or (size > 0 and ttl_s == 0):
        raise ValueError(f"history rule {rule!r}: SIZE >= 0, TTL_S >= 0, and TTL_S > 0 when SIZE > 0")
    return pattern[:-1], HistoryPolicy(size, ttl_s)


RECOVERED = (True, None)


def recovery_outcome(
    since_seq: int, since_epoch: str, room_seq: int, room_epoch: str,
    first_seq: int | None, last_seq: int | None, history_size: int,
) -> tuple[bool, str | None]:
    """Whether the messages read after (since_seq, since_epoch) are everything the client missed.

    `room_seq`/`room_epoch` is the room's position at the read; `first_seq` and
    `last_seq` bound the messages read (None when none). Reasons are the
    protocol's RECOVERY_* strings.
    """
    from node import protocol  # local: protocol owns the reason strings, history stays import-light

    from_the_start = since_seq == 0 and since_epoch == ""
    if since_epoch != room_epoch and not from_the_start:
        return False, protocol.RECOVERY_EPOCH_CHANGED
    if since_seq > room_seq:  # a position this stream never had
        return False, protocol.RECOVERY_EPOCH_CHANGED
    if since_seq == room_seq:
        return RECOVERED
    if first_seq != since_seq + 1:
        return False, protocol.RECOVERY_NO_HISTORY if history_size == 0 else protocol.RECOVERY_HISTORY_TRUNCATED
    if last_seq != room_seq:
        return False, protocol.RECOVERY_TOO_MANY_MISSED
    return RECOVERED
