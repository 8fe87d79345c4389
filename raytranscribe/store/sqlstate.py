"""What a database error means: transient (run the transaction again), a refusal the operator must
fix (URL, role, grants, schema), or a plain failure. One home for the SQLSTATEs, read by both ways
the store talks to PostgreSQL: ``connection`` (SQLAlchemy's pools; errors wrapped, the psycopg2 one
in ``.orig``) and ``reader`` (psycopg2 alone, for one-shot reads). No SQLAlchemy here.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import TYPE_CHECKING

from raytranscribe.errors import IllegalTransition, SchemaOutOfDate, Stage, StoreError, StoreMisconfigured

if TYPE_CHECKING:
    from raytranscribe.config import StoreSettings

# The back-off's warning keeps the logger it always had.
log = logging.getLogger("raytranscribe.store.connection")

# SQLSTATE raised by the transition trigger (migrations 0002 and 0004).
ILLEGAL_TRANSITION_SQLSTATE = "RT001"
# Errors worth re-running a transaction for: the transaction surely rolled back, the data is fine.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up / shutting down)
        "53300",  # too_many_connections
    }
)
# Errors no retry changes: the operator must fix the URL, the role, its grants or the server's rules.
# Class 28: invalid_authorization_specification (28000: role unknown or not allowed to log in,
# no pg_hba.conf entry; 28P01: invalid_password); 3D000: invalid_catalog_name (no such database);
# 42501: insufficient_privilege (no CONNECT on the database, no grant on a table).
MISCONFIGURED_SQLSTATES = frozenset({"3D000", "42501"})
MISCONFIGURED_SQLSTATE_CLASSES = ("28",)
# psycopg2 gives failures to connect no SQLSTATE: libpq's own words tell them apart from an outage.
MISCONFIGURED_MESSAGES = re.compile(
    r"password authentication failed|authentication failed for user|no password supplied"
    r"|role \".*\" does not exist|is not permitted to log in|database \".*\" does not exist"
    r"|no pg_hba\.conf entry|pg_hba\.conf rejects|permission denied for database"
    r"|invalid sslmode value|server does not support SSL|SSL was required|certificate verify failed"
    r"|invalid dsn|invalid connection option|invalid URI query parameter|invalid port number|invalid integer value",
    re.IGNORECASE,
)
# Statements that name what an older (or no) schema lacks: undefined_table, undefined_column,
# undefined_object (a type), undefined_function.
SCHEMA_MISSING_SQLSTATES = frozenset({"42P01", "42703", "42704", "42883"})


def pgcode(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg2 error, or of the one a SQLAlchemy error wraps; None when it has none."""
    orig = getattr(exc, "orig", None)
    return getattr(orig if orig is not None else exc, "pgcode", None)


def permanent_error(op: str, exc: BaseException, *, transient: bool) -> StoreError | None:
    """The store's error for ``exc``, or None when it is ``transient`` and no refusal (the caller retries)."""
    if pgcode(exc) == ILLEGAL_TRANSITION_SQLSTATE:
        return IllegalTransition(f"{op}: {pg_message(exc)}")
    refused = refusal(op, exc)
    if refused is not None:  # before the transient check: a refused connection is "invalidated" too
        return refused
    if not transient:
        return StoreError(f"{op} failed: {pg_message(exc)}")
    return None


def refusal(op: str, exc: BaseException) -> StoreMisconfigured | None:
    """The permanent error for a database that refuses us (credentials, options, grants, schema), else None."""
    code = pgcode(exc) or ""
    message = pg_message(exc)
    if code in SCHEMA_MISSING_SQLSTATES and op != "upgrade":
        return SchemaOutOfDate(
            f"store {op}: the database has no raytranscribe schema, or an older one ({message}): "
            "run `raytranscribe db upgrade`"
        )
    if code in MISCONFIGURED_SQLSTATES or code.startswith(MISCONFIGURED_SQLSTATE_CLASSES) or (
        not code and MISCONFIGURED_MESSAGES.search(message)
    ):
        return StoreMisconfigured(f"store {op}: {message} (check the database URL, role and grants; not retried)")
    return None


def is_transient(exc: BaseException, *, invalidated: bool, lost: bool) -> bool:
    """``invalidated``: the connection is gone; ``lost``: the driver's OperationalError/InterfaceError
    (a lost socket arrives as one, without a SQLSTATE)."""
    if invalidated:
        return True
    code = pgcode(exc)
    if code in TRANSIENT_SQLSTATES or (code or "").startswith("08"):  # class 08: connection exception
        return True
    return code is None and lost


def pg_message(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    orig = getattr(exc, "orig", None)
    msg = str(orig if orig is not None else exc).strip()
    # libpq pads "FATAL:  role ..." with two spaces; one line, single-spaced, reads better.
    return re.sub(r"\s+", " ", msg.splitlines()[0]) if msg else type(exc).__name__


def back_off(op: str, n: int, settings: StoreSettings, error: BaseException | None) -> None:
    """Wait before try ``n + 2`` of ``op`` (exponential, jittered), saying why."""
    retries = settings.op_retries
    delay = settings.op_retry_base_s * (2**n) * (0.5 + random.random() / 2)
    log.warning(
        "store %s: transient database error (try %d of %d), retrying in %.2fs: %s",
        op, n + 1, retries + 1, delay, pg_message(error),
        extra={"stage": Stage.STORE.value},
    )  # fmt: skip
    time.sleep(delay)
