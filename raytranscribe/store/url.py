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
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from raytranscribe.errors import ConfigError
from raytranscribe.isolation import note_database_url, read_database_url_file

if TYPE_CHECKING:
    from raytranscribe.config import Settings

__all__ = ["DRIVER_SCHEME", "connect_url", "psycopg2_args", "redact_url", "resolve_database_url", "resolved_url",
           "sqlalchemy_url"]

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


def _normalized(url: str) -> str:
    """``url`` as ``postgresql+psycopg2://...``; :class:`ConfigError` for another scheme or driver, or not a URL."""
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
    return f"{DRIVER_SCHEME}://{rest}"


def sqlalchemy_url(url: str) -> str:
    """The psycopg2 URL SQLAlchemy connects with, for ``postgresql://``, ``postgres://`` or
    ``postgresql+psycopg2://`` URLs. Raises :class:`ConfigError`, one line naming what is wrong
    (never the password), for anything else: another driver, another database, not a URL."""
    import sqlalchemy as sa  # here, not at import: `raytranscribe status` reads without SQLAlchemy

    normalized = _normalized(url)
    shown = redact_url(url.strip())
    try:
        parsed = sa.engine.make_url(normalized)
        port = parsed.port  # parsed lazily: "host:abc" fails here
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"invalid database URL {shown!r}: expected {_FORM}") from exc
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"invalid database URL {shown!r}: port {port} is not between 1 and 65535")
    return normalized


# SQLAlchemy's own URL pattern (sqlalchemy.engine.url._parse_url, 2.x), so that psycopg2_args reads a
# URL exactly as the store's engines do.
_URL = re.compile(
    r"""
    (?P<name>[\w+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X,
)


def psycopg2_args(url: str) -> dict[str, str | int] | None:
    """``psycopg2.connect`` keyword arguments for ``url``, as SQLAlchemy's psycopg2 dialect makes them
    (user, password, host, port, dbname, then the query's options), without importing SQLAlchemy: the
    one-shot reads of ``store.reader``. :class:`ConfigError` as :func:`sqlalchemy_url` for a wrong
    scheme or driver; None for a URL that is not plain (a bad port, hosts and ports in the query, an
    option given twice): the full store then connects, and reports, as it always has."""
    normalized = _normalized(url)
    m = _URL.match(normalized)
    if m is None:
        return None
    parts = m.groupdict()
    port = parts["port"]
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return None
    pairs = parse_qsl(parts["query"] or "")
    query = dict(pairs)
    host = parts["ipv4host"] or parts["ipv6host"]
    if len(query) != len(pairs) or "port" in query:  # an option given twice, or ports apart from hosts
        return None
    if "host" in query:  # a socket folder (?host=/run/postgresql) is one host; anything more is not plain
        if host or any(c in query["host"] for c in ",:"):
            return None
        host = query.pop("host")
    args: dict[str, str | int] = {}
    for key, value in (
        ("host", host),
        ("dbname", unquote(parts["database"]) if parts["database"] is not None else None),
        ("user", unquote(parts["username"]) if parts["username"] is not None else None),
        ("password", unquote(parts["password"]) if parts["password"] is not None else None),
        ("port", int(port) if port else None),
    ):
        if value:  # SQLAlchemy leaves out what is unset or empty
            args[key] = value
    args.update(query)
    return args


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


def resolved_url(settings: Settings) -> str:
    """The URL ``settings`` name, as given: the resolved one, else that of embedded PostgreSQL in
    ``settings.data_dir`` (started if it is not running)."""
    url = resolve_database_url(settings).database_url
    if url is None:
        from raytranscribe.local import embedded_postgres_url

        url = embedded_postgres_url(Path(settings.data_dir))
    return url


def connect_url(settings: Settings) -> str:
    """The URL a store built from ``settings`` connects with (:func:`resolved_url`, driver named)."""
    return sqlalchemy_url(resolved_url(settings))
