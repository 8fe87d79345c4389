"""Structured logs: context fields appended as key=value (or JSON), through the standard logging module."""

from __future__ import annotations

import io
import json
import logging
import sys

from raytranscribe import logs
from raytranscribe.errors import Stage


def test_key_value_lines_carry_task_attempt_stage_actor():
    buf = io.StringIO()
    logs.configure("INFO", stream=buf)
    logging.getLogger("raytranscribe.test").warning(
        "upload failed", extra=logs.task_extra(42, 3, Stage.UPLOAD, actor="worker-1.tiny-en.ab12cd", http_status=503)
    )
    line = buf.getvalue().strip()
    assert line.endswith("[task_id=42 attempt=3 stage=upload actor=worker-1.tiny-en.ab12cd http_status=503]"), line
    assert "WARNING" in line and "upload failed" in line


def test_json_lines():
    buf = io.StringIO()
    logs.configure("DEBUG", json_logs=True, stream=buf)
    logging.getLogger("raytranscribe.test").info("claimed", extra=logs.task_extra(7, 1, Stage.FETCH))
    doc = json.loads(buf.getvalue())
    assert (doc["message"], doc["task_id"], doc["attempt"], doc["stage"], doc["level"]) == ("claimed", 7, 1, "fetch", "INFO")


def test_default_handler_follows_the_current_stderr(monkeypatch):
    logs.configure("INFO")
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)  # what CLI harnesses and test runners do
    logging.getLogger("raytranscribe.test").info("hello", extra={"task_id": 1})
    assert "hello [task_id=1]" in swapped.getvalue()
