"""The documentation cannot drift from the code: the site under docs/ builds with `mkdocs build --strict`
(no broken link or anchor, no page left out of the nav); its settings table, the tests it cites as proof,
the metrics and the commands it documents are checked against the real thing; and the README stays a
short front page whose links resolve and whose commands are the docs' own."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = {page.name: page.read_text(encoding="utf-8") for page in sorted(DOCS.glob("*.md"))}
SITE = "\n".join(PAGES.values())
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _settings_table_module():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "tools" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent, capture_output=True, text=True, timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip


def _bash_block(text: str, heading: str) -> str:
    """The first ```bash block after the heading."""
    section = text[text.index(heading) :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("```", start)]


def _commands(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and spacing dropped."""
    joined = re.sub(r"\\\n", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#\s.*$", "", line).strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def test_the_site_builds_strict(tmp_path):
    proc = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_a_broken_anchor_or_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    # mkdocs only logs these at INFO unless mkdocs.yml's `validation` raises them: prove it does.
    for name, change in {
        "anchor": lambda d: (d / "cli.md").write_text(PAGES["cli.md"] + "\n[x](benchmarks.md#no-such-heading)\n"),
        "nav": lambda d: (d / "orphan.md").write_text("# Orphan\n"),
    }.items():
        copy = tmp_path / name
        shutil.copytree(DOCS, copy / "docs")
        shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
        change(copy / "docs")
        proc = _mkdocs_build(copy / "mkdocs.yml", copy / "site")
        assert proc.returncode != 0, name
        assert ("no-such-heading" if name == "anchor" else "orphan.md") in proc.stderr, proc.stderr[-2000:]


def test_settings_table_matches_config():
    tool = _settings_table_module()
    assert tool.PAGE == DOCS / "configuration.md"
    in_page = tool.in_page(PAGES["configuration.md"])
    stale = "docs/configuration.md's settings table is stale: run tools/settings_table.py --write"
    assert in_page == tool.table(), stale


def test_the_tool_rewrites_a_stale_table_in_place(tmp_path):
    tool = _settings_table_module()
    page = tmp_path / "configuration.md"
    page.write_text(f"# Configuration\n\nbefore\n\n{tool.START}| stale |\n{tool.END}\n\nafter\n")
    assert tool.write(page) is True
    assert page.read_text() == f"# Configuration\n\nbefore\n\n{tool.START}{tool.table()}{tool.END}\n\nafter\n"
    assert tool.write(page) is False


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
        assert f"`{env}`" in PAGES["configuration.md"]


def test_every_cited_test_exists():
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", SITE + README))
    assert len(cited) >= 40, len(cited)
    missing = []
    for path, name in sorted(cited):
        source = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else ""
        if not re.search(rf"^\s*def {name}\(", source, re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_metric_is_documented():
    names = set(re.findall(r'"(raytranscribe_\w+)"', (ROOT / "raytranscribe" / "metrics.py").read_text()))
    assert len(names) == 11
    documented = set(re.findall(r"\| `(raytranscribe_\w+)` \|", PAGES["monitoring.md"]))
    assert documented == names


def test_every_command_is_documented():
    from raytranscribe.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"submit", "status", "run", "demo"} <= commands
    documented = set(re.findall(r"^\| `([a-z]+)[ `]", PAGES["cli.md"], re.MULTILINE))
    assert commands <= documented, commands - documented
    assert "| `db upgrade` |" in PAGES["cli.md"]


def test_the_readme_is_a_short_front_page_whose_links_resolve():
    assert len(README.splitlines()) <= 250
    links = re.findall(r"\]\(([^)]+)\)", README)
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://", link)]
    assert [link for link in local if not (ROOT / link).is_file()] == []
    # every page of the site is one click from the README
    assert {f"docs/{name}" for name in PAGES if name != "index.md"} <= set(local)


def test_the_readme_quick_start_is_the_getting_started_page():
    block = _bash_block(README, "## Quick start")
    assert block == _bash_block(PAGES["getting-started.md"], "# Getting started")
    assert _commands(block) == [
        "python3 -m venv .venv && .venv/bin/pip install -e '.[faster,local]' && .venv/bin/raytranscribe demo",
        "bash scripts/test.sh",
    ]


def test_the_readme_backfill_is_ten_commands_of_the_runbook():
    block = _bash_block(README, "## A real backfill in ten commands")
    steps = re.findall(r"^# (\d+)\. ", block, re.MULTILINE)
    assert steps == [str(n) for n in range(1, 11)]
    runbook = _commands(_bash_block(PAGES["cluster.md"], "## The runbook"))
    commands = _commands(block)
    assert len(commands) == 11  # step 1 names the image, then builds and pushes it
    assert [c for c in commands if c not in runbook] == []
