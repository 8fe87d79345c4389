"""Database URLs: the one place that turns what an operator types into what SQLAlchemy connects with.

Where the URL comes from (:func:`resolve_database_url`): the ``--database-url`` flag, else
RAYTRANSCRIBE_DATABASE_URL, else the file RAYTRANSCRIBE_DATABASE_URL_FILE names; with none of them,
embedded PostgreSQL in ``data_dir`` (:func:`connect_url`).

Every PostgreSQL tool takes ``postgresql://user@host/db`` (and ``postgres://``). SQLAlchemy 2.1
maps a URL without a driver to psycopg 3, which raytranscribe does not use (the store reads
psycopg2's SQLSTATEs), so the driver is always named here, whatever SQLAlchemy's default is.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from raytranscribe.config import Settings
from raytranscribe.errors import ConfigError
from raytranscribe.isolation import note_database_url, read_database_url_file

__all__ = ["DRIVER_SCHEME", "connect_url", "redact_url", "resolve_database_url", "sqlalchemy_url"]

DRIVER_SCHEME = "postgresql+psycopg2"
# What an operator may write before "://"; everything maps to DRIVER_SCHEME.
ACCEPTED_SCHEMES = frozenset({"postgresql", "postgres", DRIVER_SCHEME})
_FORM = "postgresql://user[:password]@host[:port]/database"

_USERINFO_PASSWORD = re.compile(r"(://[^/?#@:]*):[^/?#]*@")  # up to the last "@": a password may hold one
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, also when it is not a URL we can parse
    (a libpq ``key=value`` string, a typo): error messages and logs never carry one."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


def sqlalchemy_url(url: str) -> str:
    """The psycopg2 URL SQLAlchemy connects with, for ``postgresql://``, ``postgres://`` or
    ``postgresql+psycopg2://`` URLs. Raises :class:`ConfigError`, one line naming what is wrong
    (never the password), for anything else: another driver, another database, not a URL."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    shown = redact_url(text)
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        raise ConfigError(f"invalid database URL {shown!r}: expected {_FORM}")
    lowered = scheme.lower()
    if lowered not in ACCEPTED_SCHEMES:
        dialect, _, driver = lowered.partition("+")
        if dialect in ("postgresql", "postgres"):
            raise ConfigError(
                f"unsupported database driver {driver!r} in {shown!r}: raytranscribe connects through psycopg2; "
                f"write {_FORM}"
            )
        raise ConfigError(f"database URL {shown!r} is not PostgreSQL ({scheme}://): expected {_FORM}")
    normalized = f"{DRIVER_SCHEME}://{rest}"
    try:
        parsed = sa.engine.make_url(normalized)
        port = parsed.port  # parsed lazily: "host:abc" fails here
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"invalid database URL {shown!r}: expected {_FORM}") from exc
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"invalid database URL {shown!r}: port {port} is not between 1 and 65535")
    return normalized


def resolve_database_url(settings: Settings) -> Settings:
    """Settings with the database URL the driver uses: ``database_url`` (the --database-url flag or
    RAYTRANSCRIBE_DATABASE_URL) when set, else the content of ``database_url_file``. Raises
    :class:`ConfigError` when the file is needed and cannot be read. The URL is noted as a secret,
    so no worker ever receives it."""
    if not settings.database_url and settings.database_url_file is not None:
        settings = settings.model_copy(update={"database_url": read_database_url_file(settings.database_url_file)})
    if settings.database_url:
        note_database_url(settings.database_url)
    return settings


def connect_url(settings: Settings) -> str:
    """The URL a store built from ``settings`` connects with: the resolved one, else that of embedded
    PostgreSQL in ``settings.data_dir`` (started if it is not running)."""
    url = resolve_database_url(settings).database_url
    if url is None:
        from raytranscribe.local import embedded_postgres_url

        url = embedded_postgres_url(Path(settings.data_dir))
    return sqlalchemy_url(url)
