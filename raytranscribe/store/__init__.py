"""The task store: PostgreSQL schema, migrations, and every state transition of a task.

``Store`` is the façade; behind it ``connection`` (engines, retries, SQLSTATEs), ``sql/*.sql`` (every
statement, named), ``newtask`` (validation, dedupe keys), ``submit``, ``record`` with the pure
``plan``, ``views`` (what comes back) and ``states`` (the statuses).
"""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from raytranscribe.store.models import OrchestratorState, Task, TaskAttempt, TaskLease, TaskQueue

_MODELS = ("OrchestratorState", "Task", "TaskAttempt", "TaskLease", "TaskQueue")


def __getattr__(name: str) -> object:
    # The ORM models are the schema's (migrations, schema tests); the store's own work is plain SQL,
    # so `raytranscribe status` does not pay for building them.
    if name in _MODELS:
        from raytranscribe.store import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
