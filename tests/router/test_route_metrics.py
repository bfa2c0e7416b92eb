"""`ringcast router` GET /metrics: lookups, answers by status, lookup latency, the ring's epoch and size."""

from __future__ import annotations

import urllib.request

import pytest

from chaos.cluster import MetricMissing, http_json, metric_value
from chaos.eventually import eventually_blocking
from router.membership import ring_key
from router.ring import Member, Ring

STATIC = "127.0.0.1:9101,127.0.0.1:9102@2"


def metrics_page(router) -> str:
    with urllib.request.urlopen(router.url("/metrics"), timeout=2) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def test_every_series_is_there_before_the_first_lookup(start_router):
    page = metrics_page(start_router("--nodes", STATIC))
    assert metric_value(page, "ringcast_router_lookups_total") == 0
    for status in ("200", "400", "503"):
        assert metric_value(page, "ringcast_router_answers_total", f'status="{status}"') == 0
    assert metric_value(page, "ringcast_router_lookup_seconds_count") == 0
    assert metric_value(page, "ringcast_router_ring_epoch") == 0
    assert metric_value(page, "ringcast_router_ring_members") == 2
    assert metric_value(page, "ringcast_router_redis_reachable") == 1
    assert metric_value(page, "process_resident_memory_bytes") > 0


def test_counts_lookups_by_status_and_times_them(start_router):
    router = start_router("--nodes", STATIC)
    for room in ("lobby", "a", "b"):
        assert http_json(router.url(f"/route?room={room}"))[0] == 200
    for query in ("", "?room=has%20space"):
        assert http_json(router.url("/route" + query))[0] == 400
    assert http_json(router.url("/ring"))[0] == 200  # not a lookup

    page = metrics_page(router)
    assert metric_value(page, "ringcast_router_lookups_total") == 5
    assert metric_value(page, "ringcast_router_answers_total", 'status="200"') == 3
    assert metric_value(page, "ringcast_router_answers_total", 'status="400"') == 2
    assert metric_value(page, "ringcast_router_answers_total", 'status="503"') == 0
    assert metric_value(page, "ringcast_router_lookup_seconds_count") == 5
    assert metric_value(page, "ringcast_router_lookup_seconds_bucket", 'le="+Inf"') == 5


def test_epoch_follows_the_published_ring_and_503s_are_counted(redis_server, start_router):
    router = start_router("--redis", redis_server.url, "--ring-poll-interval-s", "0.1")
    assert http_json(router.url("/route?room=lobby"))[0] == 503  # nothing published, no --nodes

    ring = Ring([Member("w1", "ws://127.0.0.1:9201/ws"), Member("w2", "ws://127.0.0.1:9202/ws")], 7)
    redis_server.command("SET", ring_key("ringcast:"), ring.to_json())
    eventually_blocking(lambda: metric_value(metrics_page(router), "ringcast_router_ring_epoch"), equals=7.0,
                        what="the router's epoch gauge to show the published ring")
    assert http_json(router.url("/route?room=lobby"))[0] == 200

    page = metrics_page(router)
    assert metric_value(page, "ringcast_router_ring_members") == 2
    assert metric_value(page, "ringcast_router_redis_reachable") == 1
    assert metric_value(page, "ringcast_router_answers_total", 'status="503"') == 1
    assert metric_value(page, "ringcast_router_answers_total", 'status="200"') == 1
    assert metric_value(page, "ringcast_router_lookups_total") == 2


def test_a_check_for_a_metric_that_does_not_exist_fails(start_router):
    page = metrics_page(start_router("--nodes", STATIC))
    with pytest.raises(MetricMissing):
        metric_value(page, "ringcast_router_answers_total", 'status="418"')
