"""Every metric the alert rules and the Grafana dashboard read is exported by a running
ringcast process: a real cluster (redis-server, a node with two workers, a control
replica, a router) is started and its /metrics pages are compared with the names
in every PromQL expression. No panel or rule on a metric that does not exist."""

from __future__ import annotations

import urllib.request

import pytest

from chaos.cluster import http_json
from chaos.eventually import eventually
from tests.ops.helpers import dashboard_expressions, metric_names, rule_expressions, sample_names, unexported


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


@pytest.fixture
async def exported(redis_server, start_node, start_control, start_router) -> set[str]:
    """The sample names of every process of a small real cluster, once its control replica leads and has ticked."""
    node = start_node(2)
    control = start_control()
    router = start_router("--redis", redis_server.url)
    await eventually(lambda: control.is_leader() and control.metric("ringcast_control_ticks_total") > 0,
                     what="the control replica to lead and tick")
    await eventually(lambda: control.metric("ringcast_control_nodes", 'health="alive"') == 2,
                     what="the control plane to see both workers alive")
    # The router reads the ring on its own poll: it routes once it has read one with both workers.
    await eventually(lambda: http_json(router.url("/route?room=lobby"))[0] == 200, what="the router to route lobby")
    pages = [node.metrics(index) for index in range(node.workers)]
    pages += [page(control.url + "/metrics"), page(router.url("/metrics"))]
    return set().union(*(sample_names(text) for text in pages))


async def test_every_metric_of_the_alert_rules_is_exported(exported):
    expressions = {f"rule {name}": expr for name, expr in rule_expressions().items()}
    assert unexported(expressions, exported) == {}


async def test_every_metric_of_the_dashboard_is_exported(exported):
    assert unexported(dashboard_expressions(), exported) == {}


async def test_a_made_up_metric_is_reported(exported):
    # The check can fail: a name no process exports is reported with where it is used.
    expressions = {"panel 'x'": 'sum(rate(ringcast_made_up_total{job="ringcast-node"}[5m])) / sum(ringcast_connections)'}
    assert unexported(expressions, exported) == {"ringcast_made_up_total": ["panel 'x'"]}


def test_names_are_read_from_promql_as_prometheus_would():
    expr = ('histogram_quantile(0.99, sum by (instance, le) (rate(a_seconds_bucket{job="x", le=~"0.1|+Inf"}[$__rate_interval])))'
            ' > bool 0.1 and on() b_total offset 5m unless ignoring(reason) group_left c{reason="not_a_metric"}'
            ' or (sum(d) or vector(0)) < 1e3 and label_replace(e, "dst", "$1", "src", "(.*)")')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d", "e"}
    # A histogram is read through its samples: the bare family name is not a series.
    assert "a_seconds" not in sample_names("a_seconds_bucket{le=\"+Inf\"} 1.0\na_seconds_count 1.0\n")
