"""The command line, run in-process against the test database."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from raytranscribe.cli import app


@pytest.fixture
def cli(store, database_url):
    """Run a command with RAYTRANSCRIBE_DATABASE_URL pointing at the (emptied) test database."""
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None):
        base = {"RAYTRANSCRIBE_DATABASE_URL": database_url, "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"}
        return runner.invoke(app, list(args), env={**base, **(env or {})})

    return run
