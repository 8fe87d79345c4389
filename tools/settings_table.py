"""The configuration table of ``docs/configuration.md``: every setting, its environment variable and its default.

Generated from the pydantic models in ``raytranscribe/config.py``, so it cannot disagree with them;
``tests/test_docs.py`` fails when the page's copy is stale. Regenerate it in place with::

    .venv/bin/python tools/settings_table.py --write

(without ``--write`` it prints the table).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raytranscribe.config import Settings  # noqa: E402

PREFIX = "RAYTRANSCRIBE_"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
START, END = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
# Defaults computed on the user's machine: described, not evaluated here.
FACTORY_DEFAULTS = {
    "data_dir": '`~/.local/share/raytranscribe` (`platformdirs.user_data_dir`); as root `/var/lib/raytranscribe`',
}

# The meaning of settings whose Field has no description (a description in config.py wins).
MEANINGS = {
    "data_dir": "Embedded PostgreSQL data (`pgdata/`) and the demo's copied outputs (`demo-output/`)",
    "log_level": "Level of the `raytranscribe` loggers: DEBUG, INFO, WARNING, ERROR, CRITICAL",
    "store.pool_size": "SQLAlchemy connection pool size (and as many overflow connections)",
    "store.connect_timeout_s": "Seconds to wait for a new database connection",
    "s3.region": "AWS region of the S3 client that lists, creates buckets and presigns",
    "transfer.connect_timeout_s": "Seconds a worker waits to connect to S3 (a presigned URL's host)",
    "transfer.chunk_bytes": "Bytes read per chunk while a download streams to disk",
    "health.ping_interval_s": "How often the driver pings each worker actor",
    "health.ping_timeout_s": "A ping unanswered this long quarantines the actor (no new work) until it answers or dies",
    "health.task_deadline_per_audio_s": "Seconds of deadline added per second of audio",
    "health.replace_backoff_s": "Delay before replacing an actor that died at start-up, doubled per consecutive failure",
    "breaker.min_samples": "Transfers in the window before the breaker may open",
    "breaker.cooldown_s": "How long an open breaker pauses dispatch before letting one probe through",
    "alerts.webhook_url": "URL that receives a JSON POST when a task goes dead or the failure rate passes the threshold; unset: no alerts",
    "alerts.failure_rate_threshold": "Share of failed attempts in the window that triggers a failure-rate alert",
    "alerts.window_s": "Length of the failure-rate window",
    "alerts.min_tasks": "Attempts in the window before a failure-rate alert can fire",
}


def _default(name: str, info: FieldInfo) -> str:
    if name in FACTORY_DEFAULTS:
        return FACTORY_DEFAULTS[name]
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1024**2 and value % 1024**2 == 0:
        mib = value // 1024**2
        human = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
        return f"`{value}` ({human})"
    return f"`{value}`"


def meaning(path: str, info: FieldInfo) -> str:
    return info.description or MEANINGS.get(path, "")


def _row(path: str, env: str, name: str, info: FieldInfo) -> str:
    description = meaning(path, info).replace("|", "\\|")
    return f"| `{path}` | `{env}` | {_default(name, info)} | {description} |"


def fields() -> list[tuple[str, str, FieldInfo]]:
    """(dotted path, environment variable, field) for every setting, top-level ones first."""
    out, groups = [], []
    for name, info in Settings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            groups.append((name, annotation))
        else:
            out.append((name, f"{PREFIX}{name.upper()}", info))
    for group, model in groups:
        for name, info in model.model_fields.items():
            out.append((f"{group}.{name}", f"{PREFIX}{group.upper()}__{name.upper()}", info))
    return out


def rows() -> list[str]:
    out = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for path, env, info in fields():
        out.append(_row(path, env, path.rsplit(".", 1)[-1], info))
    return out


def table() -> str:
    return "\n".join(rows()) + "\n"


def in_page(text: str) -> str:
    """The table between the page's markers."""
    return text[text.index(START) + len(START) : text.index(END)]


def write(page: Path = PAGE) -> bool:
    """Put the current table between the page's markers; True when the page changed."""
    text = page.read_text(encoding="utf-8")
    new = text.replace(START + in_page(text) + END, START + table() + END, 1)
    if new != text:
        page.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        changed = write()
        print(f"{PAGE.relative_to(PAGE.parents[1])}: {'table rewritten' if changed else 'table already current'}")
    elif sys.argv[1:]:
        print(f"usage: {sys.argv[0]} [--write]", file=sys.stderr)
        sys.exit(2)
    else:
        sys.stdout.write(table())
