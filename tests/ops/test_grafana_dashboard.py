"""deploy/grafana/ringcast.json is an importable dashboard: its data source is a variable,
it has the tutorial's three rows plus the ring and control plane, and its layout is sound.
(That its PromQL reads only exported metrics is tests/ops/test_metric_names.py.)"""

from __future__ import annotations

import json

from tests.ops.helpers import DASHBOARD


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_data_source_is_a_variable_every_panel_uses():
    dashboard = load()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in dashboard["panels"]:
        if panel["type"] in ("row", "text"):
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == wanted and target["expr"] for target in panel["targets"]), panel["title"]


def test_rows_business_performance_infrastructure_then_ring_and_control():
    rows = [panel["title"] for panel in load()["panels"] if panel["type"] == "row"]
    assert rows == ["Business", "Performance", "Infrastructure", "Ring and control plane"]


def test_ids_are_unique_and_panels_fit_the_grid():
    panels = load()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & area, f"{panel['title']!r} overlaps another panel"
        cells |= area
