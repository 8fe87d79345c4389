"""The task store: PostgreSQL schema, migrations, and every state transition of a task."""

from raytranscribe.store.models import (
    AttemptOutcome,
    OrchestratorState,
    Task,
    TaskAttempt,
    TaskLease,
    TaskQueue,
    TaskStatus,
)
from raytranscribe.store.store import (
    LEASE_EXPIRED,
    AttemptView,
    ClaimedTask,
    NewTask,
    OrchestratorView,
    RecordResult,
    StatusChange,
    Store,
    StoreStats,
    StreamedSubmit,
    SubmitReport,
    TaskView,
)

__all__ = [
    "LEASE_EXPIRED",
    "AttemptOutcome",
    "AttemptView",
    "ClaimedTask",
    "NewTask",
    "OrchestratorState",
    "OrchestratorView",
    "RecordResult",
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
