"""deploy/grafana/raytranscribe.json: a panel for every metric raytranscribe exports, and no panel
that queries a series it does not export."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import grafana

ROOT = Path(__file__).resolve().parents[1]
# Labels Ray itself puts on every series of a custom metric (and ray_io_cluster, which KubeRay's
# PodMonitor adds); `le` is a histogram bucket's bound.
RAY_LABELS = {"SessionName", "Component", "NodeAddress", "WorkerId", "Version", "instance", "ray_io_cluster"}


def _balanced(expr: str) -> bool:
    """A cheap syntax check (no PromQL parser is installed): brackets nest, quotes pair."""
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for part in expr.split('"')[::2]:  # outside string literals
        for char in part:
            if char in "([{":
                stack.append(char)
            elif char in pairs and (not stack or stack.pop() != pairs[char]):
                return False
    return not stack and expr.count('"') % 2 == 0


def test_the_exported_metrics_are_read_from_the_code():
    exported = grafana.exported()
    assert len(exported) == 11
    finished = exported["raytranscribe_tasks_finished"]
    assert finished == ({"ray_raytranscribe_tasks_finished_total"}, ("outcome", "stage"))
    assert exported["raytranscribe_rtfx"] == ({"ray_raytranscribe_rtfx"}, ())
    assert "ray_raytranscribe_stage_seconds_bucket" in exported["raytranscribe_stage_seconds"][0]


def test_every_exported_metric_has_a_panel():
    queried = set().union(*(grafana.series_in(expr) for _, expr in grafana.queries(grafana.load())))
    missing = [name for name, (series, _) in grafana.exported().items() if not series & queried]
    assert missing == []


def test_every_panel_queries_exported_series_with_their_labels():
    exported = grafana.exported()
    owner = {s: name for name, (series, _) in exported.items() for s in series}
    dashboard = grafana.load()
    titles = {title for title, _ in grafana.queries(dashboard)}
    assert titles == {p["title"] for p in dashboard["panels"]}, "a panel without a query"
    for title, expr in grafana.queries(dashboard):
        assert _balanced(expr), f"{title!r}: unbalanced brackets or quotes in {expr}"
        used = grafana.series_in(expr)
        assert used and used <= owner.keys(), f"{title!r} queries {used - owner.keys() or 'nothing of ours'}"
        allowed = RAY_LABELS | {label for s in used for label in exported[owner[s]][1]}
        if any(s.endswith("_bucket") for s in used):
            allowed.add("le")
        groups = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        grouped = {label.strip() for group in groups for label in group.split(",")}
        matched = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        assert grouped | matched <= allowed, f"{title!r} uses labels {sorted((grouped | matched) - allowed)}"
        assert 'SessionName=~"$SessionName"' in expr and 'ray_io_cluster=~"$Cluster"' in expr, title


def test_failures_panel_reads_only_failed_outcomes():
    [expr] = [e for title, e in grafana.queries(grafana.load()) if title == "Failures by stage"]
    assert 'outcome=~"retry|dead"' in expr and "by (stage, outcome)" in expr


def test_the_dashboard_is_a_grafana_model_on_a_prometheus_datasource_variable():
    dashboard = grafana.load()
    assert dashboard["uid"] == "raytranscribe" and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"SessionName", "Cluster"} <= variables.keys()
    for name in ("SessionName", "Cluster"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), panel["title"]
        assert panel["type"] in {"timeseries", "stat"} and panel["description"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']!r} overlaps another panel"
        cells |= mine


def test_the_docs_say_how_to_load_it_and_which_throughput_is_which():
    page = (ROOT / "docs" / "monitoring.md").read_text()
    grafana_section = page[page.index("## Grafana") :]
    assert "deploy/grafana/raytranscribe.json" in grafana_section
    assert "/tmp/ray/session_latest/metrics/grafana/dashboards" in grafana_section
    assert "| `raytranscribe_rtfx` | gauge: RTFx, audio seconds transcribed per wall second" in page
