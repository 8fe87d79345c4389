"""Watching a real callable without replacing it."""

from __future__ import annotations

from typing import Any

import pytest


def record_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[Any]:
    """The first argument of every call of ``owner.name`` from now on (the real one still runs)."""
    calls: list[Any] = []
    real = getattr(owner, name)

    def recorded(first, *args, **kwargs):
        calls.append(first)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls
