"""The README cannot drift from the code: its settings table, the tests it cites as proof, the
metrics and the commands it documents are checked against the real thing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _settings_table_module():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "tools" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_table_matches_config():
    tool = _settings_table_module()
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    in_readme = README[README.index(start) + len(start) : README.index(end)]
    assert in_readme == tool.table(), "README settings table is stale: run .venv/bin/python tools/settings_table.py"


def test_every_setting_is_in_the_table_with_its_variable_and_a_meaning():
    from raytranscribe.config import RetrySettings, Settings

    tool = _settings_table_module()
    fields = tool.fields()
    groups = [n for n, f in Settings.model_fields.items() if "__" not in n and hasattr(f.annotation, "model_fields")]
    expected = len(Settings.model_fields) - len(groups) + sum(
        len(Settings.model_fields[g].annotation.model_fields) for g in groups
    )
    assert len(fields) == expected and expected > 40
    for path, env, info in fields:
        assert tool.meaning(path, info), f"{path} has no description: add one in config.py or MEANINGS"
    rows = {line.split("|")[1].strip(): line for line in tool.rows()[2:]}
    assert rows["`retry.max_retries`"] == (
        "| `retry.max_retries` | `RAYTRANSCRIBE_RETRY__MAX_RETRIES` | `3` | Retries granted; the failure after the last one makes the task dead |"
    )
    assert RetrySettings().max_retries == 3
    assert "| `database_url` | `RAYTRANSCRIBE_DATABASE_URL` | unset |" in rows["`database_url`"]
    assert "`4294967296` (4 GiB)" in rows["`transfer.max_download_bytes`"]


def test_the_table_names_variables_that_settings_read(monkeypatch):
    from raytranscribe.config import Settings

    monkeypatch.setenv("RAYTRANSCRIBE_RETRY__MAX_RETRIES", "7")
    monkeypatch.setenv("RAYTRANSCRIBE_NAMESPACE", "from-env")
    monkeypatch.setenv("RAYTRANSCRIBE_BREAKER__COOLDOWN_S", "1.5")
    s = Settings()
    assert (s.retry.max_retries, s.namespace, s.breaker.cooldown_s) == (7, "from-env", 1.5)
    for env in ("RAYTRANSCRIBE_RETRY__MAX_RETRIES", "RAYTRANSCRIBE_NAMESPACE", "RAYTRANSCRIBE_BREAKER__COOLDOWN_S"):
        assert f"`{env}`" in README


def test_every_cited_test_exists():
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", README))
    assert len(cited) >= 40, len(cited)
    missing = []
    for path, name in sorted(cited):
        source = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else ""
        if not re.search(rf"^\s*def {name}\(", source, re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_metric_is_documented():
    names = set(re.findall(r'"(raytranscribe_\w+)"', (ROOT / "raytranscribe" / "metrics.py").read_text()))
    assert len(names) == 10
    documented = set(re.findall(r"\| `(raytranscribe_\w+)` \|", README))
    assert documented == names


def test_every_command_is_documented():
    from raytranscribe.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"submit", "status", "run", "demo"} <= commands
    documented = set(re.findall(r"^\| `([a-z]+)[ `]", README, re.MULTILINE))
    assert commands <= documented, commands - documented
    assert "| `db upgrade` |" in README
