"""/readyz tells the truth about the bus: a worker that lost Redis is not ready.

Real redis-server and a real 1-worker node: ready while on the bus; Redis
stopped -> 503 with `busConnected: false` (a proxy polling /readyz stops
sending it new clients; /healthz still answers, the process is alive);
Redis back on the same port -> ready again once the subscriber has
reconnected and re-subscribed.
"""

from __future__ import annotations

from chaos.cluster import http_json
from chaos.eventually import eventually_blocking

BUS_WAIT_S = 30.0  # the subscriber notices a dead Redis within its liveness window and reconnects with backoff


def readiness(node) -> tuple[int, bool | None]:
    status, body = http_json(node.http_url(0, "/readyz"))
    return status, body.get("busConnected")


def test_a_worker_without_its_bus_is_not_ready_and_is_again_once_reconnected(redis_server, start_node):
    node = start_node(1)
    assert readiness(node) == (200, True)
    redis_server.stop()
    eventually_blocking(lambda: readiness(node), equals=(503, False), timeout_s=BUS_WAIT_S,
                        what="/readyz 503 busConnected false with Redis gone")
    assert http_json(node.http_url(0, "/healthz"))[0] == 200  # alive, just not ready
    redis_server.start()
    eventually_blocking(lambda: readiness(node), equals=(200, True), timeout_s=BUS_WAIT_S,
                        what="/readyz 200 again with Redis back")
