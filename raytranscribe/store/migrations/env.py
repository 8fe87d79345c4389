"""Alembic environment, run programmatically by :meth:`raytranscribe.store.Store.upgrade`.

The caller hands over an open connection (already inside a transaction holding the migration
advisory lock) through ``config.attributes["connection"]``; with a plain URL (the alembic CLI)
we open one ourselves.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from raytranscribe.store.models import Base
from raytranscribe.store.url import sqlalchemy_url

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(sqlalchemy_url(config.get_main_option("sqlalchemy.url")), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
