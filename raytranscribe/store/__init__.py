"""The task store: PostgreSQL schema, migrations, and every state transition of a task.

``Store`` is the façade; behind it ``connection`` (engines, retries, SQLSTATEs), ``sql/*.sql`` (every
statement, named), ``newtask`` (validation, dedupe keys), ``submit``, ``record`` with the pure
``plan``, ``views`` (what comes back) and ``states`` (the statuses).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raytranscribe.store.models import OrchestratorState, Task, TaskAttempt, TaskLease, TaskQueue
    from raytranscribe.store.newtask import NewTask
    from raytranscribe.store.record import LEASE_EXPIRED
    from raytranscribe.store.states import AttemptOutcome, TaskStatus
    from raytranscribe.store.store import Store
    from raytranscribe.store.views import (
        AttemptView,
        ClaimedTask,
        OrchestratorView,
        RecordResult,
        ResultRow,
        StatusChange,
        StoreStats,
        StreamedSubmit,
        SubmitReport,
        TaskView,
    )

# Each name loads its module on first use: `raytranscribe status` reads through store.reader with
# psycopg2 alone, and must not pay for SQLAlchemy (Store) or the ORM models (the schema's, for
# migrations and schema tests) on the way to the views and states it shows.
_HOMES = {
    "NewTask": "newtask",
    "LEASE_EXPIRED": "record",
    "AttemptOutcome": "states",
    "TaskStatus": "states",
    "Store": "store",
    **dict.fromkeys(("OrchestratorState", "Task", "TaskAttempt", "TaskLease", "TaskQueue"), "models"),
    **dict.fromkeys(
        ("AttemptView", "ClaimedTask", "OrchestratorView", "RecordResult", "ResultRow", "StatusChange", "StoreStats",
         "StreamedSubmit", "SubmitReport", "TaskView"),
        "views",
    ),
}  # fmt: skip


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found once
    return value


__all__ = [
    "LEASE_EXPIRED",
    "AttemptOutcome",
    "AttemptView",
    "ClaimedTask",
    "NewTask",
    "OrchestratorState",
    "OrchestratorView",
    "RecordResult",
    "ResultRow",
    "StatusChange",
    "Store",
    "StoreStats",
    "StreamedSubmit",
    "SubmitReport",
    "Task",
    "TaskAttempt",
    "TaskLease",
    "TaskQueue",
    "TaskStatus",
    "TaskView",
]
