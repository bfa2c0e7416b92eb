"""LoopCounter and LoopHistogram expose exactly what prometheus_client's Counter and Histogram would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """Every sample of a registry's exposition by (name, labels), `_created` series left out (loop metrics
    have none)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_loop_histogram_exposes_what_a_prometheus_histogram_does():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("h_seconds", "doc", BUCKETS, ours)
    reference = Histogram("h_seconds", "doc", buckets=BUCKETS, registry=theirs)
    # on a bound (counted in it: `le` is inclusive), between bounds, below the first, past the last
    for value in (0.001, 0.0005, 0.01, 0.05, 0.1, 0.99, 1.0, 7.5, 0.0):
        loop.observe(value)
        reference.observe(value)
    assert samples(ours) == samples(theirs)
    assert samples(ours)[("h_seconds_bucket", (("le", "0.001"),))] == 3  # 0.0, 0.0005 and 0.001
    assert samples(ours)[("h_seconds_count", ())] == 9


def test_a_loop_counter_exposes_what_a_prometheus_counter_does_with_and_without_labels():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain, plain_ref = LoopCounter("c_total", "doc", ours), Counter("c_total", "doc", registry=theirs)
    typed = LoopCounter("t_total", "doc", ours, ["type"])
    typed_ref = Counter("t_total", "doc", ["type"], registry=theirs)
    for counter in (typed, typed_ref):
        counter.labels("join")  # exported at 0 before it moves
        counter.labels("publish").inc()
        counter.labels("publish").inc(4)
    for counter in (plain, plain_ref):
        counter.inc()
        counter.inc(10)
    assert samples(ours) == samples(theirs)
    assert samples(ours)[("t_total", (("type", "join"),))] == 0
    assert samples(ours)[("c_total", ())] == 11


def test_wrong_labels_and_unsorted_buckets_are_refused():
    registry = CollectorRegistry()
    typed = LoopCounter("t_total", "doc", registry, ["type"])
    with pytest.raises(ValueError):
        typed.labels("a", "b")
    with pytest.raises(ValueError):
        typed.inc()  # a labelled counter moves through one of its labels
    with pytest.raises(ValueError):
        LoopHistogram("h", "doc", (1.0, 0.5), registry)


def test_a_name_taken_twice_in_one_registry_is_refused():
    registry = CollectorRegistry()
    LoopCounter("c_total", "doc", registry)
    with pytest.raises(ValueError):
        Counter("c_total", "doc", registry=registry)
