"""Structured logs through the standard ``logging`` module.

Call sites pass context as ``extra={"task_id": .., "attempt": .., "stage": .., "actor": ..}``;
the formatter appends whichever of those a record carries as ``key=value`` pairs (or JSON fields),
so ``grep task_id=42`` finds a task's whole story across the driver and the workers.
"""

from __future__ import annotations

import json
import logging
import sys

CONTEXT_KEYS = ("task_id", "attempt", "stage", "actor", "node", "owner", "error_class", "http_status")


def task_extra(task_id: int | None = None, attempt: int | None = None, stage=None, **more) -> dict:
    out = {"task_id": task_id, "attempt": attempt, "stage": str(stage) if stage is not None else None}
    out.update(more)
    return {k: v for k, v in out.items() if v is not None}


class KeyValueFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS if getattr(record, k, None) is not None)
        return f"{base} [{ctx}]" if ctx else base


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in CONTEXT_KEYS:
            v = getattr(record, k, None)
            if v is not None:
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, not at configuration time
    (test runners and CLI harnesses swap it, and a closed one must not swallow later logs)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(level: str = "INFO", *, json_logs: bool = False, stream=None) -> None:
    """Idempotent: replaces the handler this function installed before, leaves others alone."""
    root = logging.getLogger("raytranscribe")
    for h in list(root.handlers):
        if getattr(h, "_raytranscribe", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler._raytranscribe = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_logs else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
