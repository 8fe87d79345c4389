"""Every SQL statement of the store, named, one file per concern (``queue.sql``, ``lifecycle.sql``,
``reads.sql``, ``orchestrators.sql``, ``schema.sql``).

A statement starts at a ``-- name: <name>`` line and runs to the next one. Lines that are only a
comment are for the reader and are not sent (so a fragment never comments out what follows it).
``{placeholder}`` marks a part filled with ``str.format`` before use: a fragment named in the same
file, never a value (values are bind parameters).
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)[ \t]*$", re.MULTILINE)
_COMMENT_LINE = re.compile(r"^[ \t]*--.*\n?", re.MULTILINE)


class Statements:
    """The statements of one file, as attributes: ``load("queue").claim``."""

    def __init__(self, concern: str, statements: dict[str, str]):
        self._concern = concern
        self._statements = statements

    def __getattr__(self, name: str) -> str:
        try:
            return self.__dict__["_statements"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__['_concern']}.sql names no statement {name!r}") from None


@functools.cache
def load(concern: str) -> Statements:
    """The statements of ``<concern>.sql``, as attributes named by their ``-- name:`` lines."""
    text = files(__package__).joinpath(f"{concern}.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)[1:]  # [name, body, name, body, ...]; what precedes the first name is the file's note
    statements = {name: _COMMENT_LINE.sub("", body).strip() for name, body in zip(parts[::2], parts[1::2])}
    if len(statements) != len(parts) // 2:
        raise RuntimeError(f"{concern}.sql names a statement twice")
    return Statements(concern, statements)


# A bind parameter as SQLAlchemy's text() finds one: ``:name``, not ``::type`` nor ``\:``.
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


@functools.cache
def pyformat(statement: str) -> str:
    """``statement`` with its ``:name`` parameters as psycopg2 takes them (``%(name)s``, a ``%`` doubled),
    as SQLAlchemy's text() sends it: for ``store.reader``, which runs the statements without SQLAlchemy."""
    return _BIND.sub(r"%(\1)s", statement.replace("%", "%%")).replace("\\:", ":")
