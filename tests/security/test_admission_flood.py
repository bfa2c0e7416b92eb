"""Refused upgrades cost the address that makes them, not the worker's accept rate that everyone shares.

A flood of bad-token upgrades from one address (127.0.0.2) must not lock out a
client with a valid token from another (127.0.0.3): the flooder's refusals are
charged to its own bucket (`ip_refused_upgrade_*`), then it gets HTTP 429
`TOO_MANY_REFUSED_UPGRADES_FROM_IP`; only requests about to be admitted spend
the accept rate; every refusal says `Connection: close`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time

from chaos.eventually import eventually
from chaos.rawws import HttpAnswer, RawWebSocket, read_http_answer, upgrade_request
from node.admission import Admission, Admitted
from tests.security.tokens import KEY1, bearer, flag, token

FLOODER, VALID = "127.0.0.2", "127.0.0.3"
REFUSED_BURST = 10  # --ip-refused-upgrade-burst of the test below
FLOOD = 2000  # bad-token upgrades in all, bounded
SENDERS = 6  # the flooder's concurrent connections
REJECTED = "ringcast_connections_rejected_total"


async def upgrade_from(source_ip: str, host: str, port: int, headers: dict[str, str]) -> tuple[HttpAnswer, RawWebSocket]:
    """One upgrade request from `source_ip`; the answer, and the socket (the caller closes it)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source_ip, 0)), 10)
    writer.write(upgrade_request(host, port, "/ws", headers))
    answer = await asyncio.wait_for(read_http_answer(reader), 10)
    return answer, RawWebSocket(reader, writer, answer)


async def test_a_bad_token_flood_from_one_address_leaves_valid_clients_admitted(start_node):
    node = start_node(
        1, "--jwt-secret", flag(KEY1),
        "--accept-rate-per-s", "0.001", "--accept-burst", "5",  # 5 sockets for the whole test: the flood must not take them
        "--ip-refused-upgrade-rate-per-s", "0.001", "--ip-refused-upgrade-burst", str(REFUSED_BURST),
    )
    bad = bearer(token(KEY1, exp_in_s=-60))  # expired: HTTP 401
    good = bearer(token(KEY1))
    answers: collections.Counter[tuple[int, str]] = collections.Counter()
    keep_alive_answers = 0
    sent = 0

    async def flood(until: int) -> None:
        nonlocal sent, keep_alive_answers
        while sent < until:
            sent += 1
            answer, ws = await upgrade_from(FLOODER, node.host, node.port, bad)
            assert answer.status != 101, "a bad token was admitted"
            answers[(answer.status, json.loads(answer.body)["error"])] += 1
            keep_alive_answers += answer.headers.get("connection", "").lower() != "close"
            assert await ws.at_eof()  # the worker closed the socket after its answer
            ws.close()

    async def admitted() -> None:
        answer, ws = await upgrade_from(VALID, node.host, node.port, good)
        try:
            assert answer.status == 101, (answer.status, answer.body)
            kind, payload = await ws.recv()
            assert b'"welcome"' in payload
        finally:
            ws.close()

    await asyncio.gather(*(flood(FLOOD // 2) for _ in range(SENDERS)))  # the first half of the flood
    await admitted()  # after it
    await asyncio.gather(admitted(), *(flood(FLOOD) for _ in range(SENDERS)))  # during the second half
    assert sent == FLOOD
    assert answers[(401, "UNAUTHORIZED")] == REFUSED_BURST  # its own budget of refusals, then 429
    assert answers[(429, "TOO_MANY_REFUSED_UPGRADES_FROM_IP")] == FLOOD - REFUSED_BURST
    assert keep_alive_answers == 0  # every refusal said Connection: close
    await eventually(lambda: node.metric(0, REJECTED, 'reason="TOO_MANY_REFUSED_UPGRADES_FROM_IP"'),
                     equals=FLOOD - REFUSED_BURST, what="every 429 counted")
    assert node.metric(0, REJECTED, 'reason="ACCEPT_RATE_EXCEEDED"') == 0
    assert node.metric(0, "ringcast_connections_opened_total") == 2


async def test_a_refusal_says_retry_after_and_connection_close(start_node):
    node = start_node(1, "--jwt-secret", flag(KEY1), "--ip-refused-upgrade-rate-per-s", "0.25",
                      "--ip-refused-upgrade-burst", "1")
    unauthorized, first = await upgrade_from(FLOODER, node.host, node.port, {})
    limited, second = await upgrade_from(FLOODER, node.host, node.port, bearer(token(KEY1)))  # even a good token
    other, third = await upgrade_from(VALID, node.host, node.port, bearer(token(KEY1)))  # another address: admitted
    for ws in (first, second, third):
        ws.close()
    assert (unauthorized.status, unauthorized.headers["connection"]) == (401, "close")
    assert (limited.status, limited.headers["connection"]) == (429, "close")
    assert b"TOO_MANY_REFUSED_UPGRADES_FROM_IP" in limited.body and limited.headers["retry-after"] == "4"
    assert other.status == 101


# --- the decision itself, without a worker -------------------------------------------------

def test_refusals_are_charged_to_their_address_and_only_admissions_spend_the_accept_rate():
    from node.auth import TokenVerifier

    admission = Admission(
        allowed_origins=("https://app.example.com",), max_connections_per_ip=100, accept_rate_per_s=1.0,
        accept_burst=1, verifier=TokenVerifier({KEY1[0]: KEY1[1].encode()}), now=0.0,
        refused_rate_per_s=0.5, refused_burst=3, refused_max_ips=2,
    )

    def check(ip, authorization=None, origin=None, now=0.0):
        return admission.check(ip=ip, origin=origin, authorization=authorization, query_token=None,
                               now_monotonic=now, now_unix=time.time())

    good = bearer(token())["Authorization"]
    assert [check("a").status for _ in range(2)] == [401, 401]
    assert check("a", origin="https://evil.test").status == 403  # a refused Origin counts too
    refused = check("a", authorization=good)  # the address's budget is spent: even a good token waits
    assert (refused.status, refused.code, refused.retry_after_s) == (429, "TOO_MANY_REFUSED_UPGRADES_FROM_IP", 2)
    assert isinstance(check("b", authorization=good), Admitted)  # other addresses are not affected...
    assert isinstance(check("a", authorization=good, now=2.0), Admitted)  # ...and "a" is served once it refilled
    # The table is bounded: a third address forgets the least recently refused one.
    check("b"), check("c")
    assert set(admission.refused.buckets) == {"b", "c"}
