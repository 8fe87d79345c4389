"""The shipped Grafana dashboard, and the Prometheus series raytranscribe's metrics become."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from ray.util import metrics as ray_metrics

from raytranscribe import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "raytranscribe.json"
SERIES = re.compile(r"\bray_raytranscribe_\w+")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def exported() -> dict[str, tuple[set[str], tuple[str, ...]]]:
    """Per metric that raytranscribe.metrics defines: the series names Prometheus gets (Ray prefixes
    ``ray_``; counters end in ``_total``, histograms are ``_bucket``, ``_sum`` and ``_count``) and its
    label names."""
    found = {}
    for field in dataclasses.fields(metrics.Metrics):
        metric = getattr(metrics.get(), field.name)
        info = metric.info
        base = f"ray_{info['name']}"
        if isinstance(metric, ray_metrics.Counter):
            series = {f"{base}_total"}
        elif isinstance(metric, ray_metrics.Histogram):
            series = {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        elif isinstance(metric, ray_metrics.Gauge):
            series = {base}
        else:
            raise AssertionError(f"{info['name']}: a metric type the dashboard test does not know")
        found[info["name"]] = (series, tuple(info["tag_keys"]))
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every target of every panel, rows included."""
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out += [(inner["title"], target["expr"]) for target in inner.get("targets", [])]
    return out


def series_in(expr: str) -> set[str]:
    return set(SERIES.findall(expr))
