"""Reading the node's Prometheus endpoint, what the Ray dashboard and Grafana scrape."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType

import requests


def body(ray_module: ModuleType) -> str:
    port = next(n["MetricsExportPort"] for n in ray_module.nodes() if n["Alive"])
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def lines(ray_module: ModuleType, name: str) -> list[str]:
    """The endpoint's sample lines of metric ``name`` (Ray prefixes ``ray_``)."""
    return [line for line in body(ray_module).splitlines() if line.startswith(f"ray_{name}")]


def total(samples: list[str]) -> float:
    """A counter's value from its sample lines: the largest ``_total`` series (0 before the first)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in samples if "_total{" in line]
    return max(values, default=0.0)


def scrape(
    ray_module: ModuleType,
    names: set[str],
    timeout: float = 30.0,
    ready: Callable[[dict[str, list[str]]], bool] = lambda found: True,
) -> dict[str, list[str]]:
    """Sample lines per metric name, once every name has some and ``ready`` holds (exports lag)."""
    deadline = time.monotonic() + timeout
    found: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        text = body(ray_module)
        found = {n: [line for line in text.splitlines() if line.startswith(f"ray_{n}")] for n in names}
        if all(found.values()) and ready(found):
            return found
        time.sleep(0.5)
    raise AssertionError(f"metrics missing from the endpoint, or not yet as expected: {found}")
