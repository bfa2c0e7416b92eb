"""The numbers of `ringcast ctl top`: metrics parsing, rates, p99 from histogram buckets, rows."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from control.top_view import (
    UNREACHABLE, MetricsMissing, WorkerSample, build_view, delivery_rate, human_bytes, human_rate,
    human_seconds, metrics_url, parse_worker_metrics, quantile_between,
)

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def page(delivered: float, observations: list[float]) -> str:
    """A /metrics page with the two series top reads, written by prometheus_client as a worker does."""
    registry = CollectorRegistry()
    Counter("ringcast_messages_delivered", "d", registry=registry).inc(delivered)
    histogram = Histogram("ringcast_message_handling_seconds", "h", buckets=BUCKETS, registry=registry)
    for value in observations:
        histogram.observe(value)
    Counter("ringcast_other_total", "noise", registry=registry).inc(99)
    return generate_latest(registry).decode()


def sample(at_s: float, delivered: float, buckets: dict[float, float]) -> WorkerSample:
    return WorkerSample(at_s, delivered, tuple(sorted(buckets.items())))


def test_a_worker_page_is_reduced_to_the_counter_and_cumulative_buckets():
    parsed = parse_worker_metrics(page(42, [0.0005, 0.005, 0.005, 5.0]), taken_at_s=7.0)
    assert parsed.taken_at_s == 7.0 and parsed.delivered_total == 42
    assert parsed.latency_buckets == ((0.001, 1), (0.01, 3), (0.1, 3), (1.0, 3), (math.inf, 4))


def test_a_page_without_the_series_is_refused_not_read_as_zero():
    with pytest.raises(MetricsMissing):
        parse_worker_metrics("# nothing here\n", 0.0)


def test_the_rate_is_the_counter_delta_over_the_time_between_samples():
    assert delivery_rate(sample(10.0, 100, {}), sample(12.0, 300, {})) == 100.0
    assert delivery_rate(sample(10.0, 100, {}), sample(11.0, 100, {})) == 0.0


def test_a_counter_that_went_down_means_a_restart_and_gives_no_rate():
    assert delivery_rate(sample(10.0, 500, {}), sample(11.0, 3, {})) is None
    assert delivery_rate(sample(10.0, 1, {}), sample(10.0, 2, {})) is None  # same instant


def test_p99_counts_only_the_observations_between_the_two_samples():
    # Before: 100 slow frames (0.1-1 s). Between: 100 fast ones (<= 1 ms). The old slow ones must not count.
    before = sample(0, 0, {0.001: 0, 0.01: 0, 0.1: 0, 1.0: 100, math.inf: 100})
    after = sample(1, 0, {0.001: 100, 0.01: 100, 0.1: 100, 1.0: 200, math.inf: 200})
    assert quantile_between(before, after) == pytest.approx(0.001 * 0.99)


def test_p99_interpolates_inside_its_bucket_like_histogram_quantile():
    zero = sample(0, 0, {0.001: 0, 0.01: 0, 0.1: 0, math.inf: 0})
    # 90 under 1 ms, 10 between 1 and 10 ms: rank 99 is the 9th of 10 in (0.001, 0.01].
    after = sample(1, 0, {0.001: 90, 0.01: 100, 0.1: 100, math.inf: 100})
    assert quantile_between(zero, after) == pytest.approx(0.001 + 0.009 * 0.9)
    assert quantile_between(zero, after, q=0.5) == pytest.approx(0.001 * 50 / 90)


def test_p99_past_the_last_finite_bound_is_that_bound():
    zero = sample(0, 0, {0.1: 0, math.inf: 0})
    after = sample(1, 0, {0.1: 0, math.inf: 10})
    assert quantile_between(zero, after) == 0.1


def test_no_observation_or_a_restart_gives_no_p99():
    same = sample(0, 0, {0.1: 5, math.inf: 5})
    assert quantile_between(same, same) is None
    restarted = sample(1, 0, {0.1: 1, math.inf: 1})
    assert quantile_between(same, restarted) is None


def test_human_units():
    assert [human_rate(x) for x in (None, 0.0, 12.345, 512, 1500, 25_000, 3_200_000)] == \
        ["-", "0.0", "12.3", "512", "1.5k", "25k", "3.2M"]
    assert [human_seconds(x) for x in (None, 0.00025, 0.0123, 2.5)] == ["-", "250us", "12.3ms", "2.50s"]
    assert [human_bytes(x) for x in (None, 512, 3 * 2**20 + 2**19, 61210624, 2**31)] == \
        ["-", "512B", "3.5MiB", "58MiB", "2.0GiB"]


def test_the_metrics_url_comes_from_the_advertised_websocket_url():
    assert metrics_url("ws://127.0.0.1:8700/ws") == "http://127.0.0.1:8700/metrics"
    assert metrics_url("wss://edge-1.example:443/ws") == "https://edge-1.example:443/metrics"
    assert metrics_url("http://10.0.0.1:8701") == "http://10.0.0.1:8701/metrics"
    assert metrics_url(None) is None and metrics_url("garbage") is None and metrics_url("ftp://x/") is None


def test_the_metrics_url_is_at_the_internal_address_when_the_worker_reports_one():
    # The public URL may be a TLS proxy's; the worker's own /metrics is plain HTTP at its address.
    assert metrics_url("wss://edge.example.com/w/edge-a-0", "10.0.0.7:8700") == "http://10.0.0.7:8700/metrics"
    assert metrics_url("wss://edge.example.com/w/a", "[2001:db8::7]:8700") == "http://[2001:db8::7]:8700/metrics"
    assert metrics_url("ws://127.0.0.1:8700/ws", "") == "http://127.0.0.1:8700/metrics"  # an older worker


def node(worker: str, **fields) -> dict:
    base = {"id": worker, "url": f"ws://{worker}/ws", "health": "alive", "state": "active", "inRing": True,
            "connections": 10, "rooms": 3, "cpuPercent": 12.0, "rssBytes": 61210624}
    return {**base, **fields}


def test_rows_are_sorted_by_worker_with_rates_totals_and_unreachable_workers():
    nodes = {"ringEpoch": 6, "nodes": [node("b:2", connections=5, rooms=1), node("a:1"),
                                       node("c:3", health="dead", state=None, connections=None, rooms=None,
                                            cpuPercent=None, rssBytes=None, inRing=False)]}
    buckets = {0.01: 0, math.inf: 0}
    before = {"a:1": sample(0, 0, buckets), "b:2": sample(0, 50, buckets), "c:3": "refused"}
    after = {"a:1": sample(2, 400, {0.01: 10, math.inf: 10}), "b:2": sample(2, 50, buckets),
             "c:3": "http://c:3/metrics: connection refused"}
    view = build_view(nodes, {"epoch": 7, "members": []}, {"leaderReplica": {"id": "ctl-1", "url": "u"}},
                      before, after)

    assert [row.worker for row in view.rows] == ["a:1", "b:2", "c:3"]
    a, b, c = view.rows
    assert (a.state, a.connections, a.rooms, a.deliveries_per_s, a.cpu, a.rss, a.in_ring) == \
        ("active", "10", "3", "200", "12.0", "58MiB", "yes")
    assert a.p99 == human_seconds(0.0099)
    assert (b.deliveries_per_s, b.p99) == ("0.0", "-")  # nothing handled: no p99, not 0
    assert (c.health, c.state, c.deliveries_per_s, c.p99, c.rss, c.in_ring) == \
        ("dead", "-", UNREACHABLE, "-", "-", "no")
    assert view.problems == ["c:3: http://c:3/metrics: connection refused"]

    header = view.header
    assert (header.ring_epoch, header.leader, header.workers, header.alive) == (7, "ctl-1", 3, 2)
    assert (header.connections, header.rooms, header.deliveries_per_s, header.unreachable) == (15, 4, 200.0, 1)
    assert "ring epoch 7" in header.line() and "leader ctl-1" in header.line() and "1 unreachable" in header.line()


def test_the_first_refresh_of_a_worker_has_no_rate_yet_and_missing_answers_show_as_dashes():
    view = build_view({"ringEpoch": 3, "nodes": [node("a:1")]}, None, None, {}, {"a:1": sample(1, 10, {math.inf: 0})})
    assert view.rows[0].deliveries_per_s == "-" and view.rows[0].problem is None
    assert view.header.ring_epoch == 3 and view.header.leader == "none"
