"""The task store: a thin façade over the store's modules, one transaction per public operation.

``connection`` runs each operation and re-runs it on transient errors; every statement is named in
``sql/*.sql``; ``submit`` streams tasks in; ``record`` locks, plans (``plan``, pure) and writes
outcomes; ``views`` are what comes back; ``newtask`` is what goes in.

Claim order and lease expiry are read from ``task_queue`` and ``task_leases``, which triggers on
``tasks`` keep exact (migration 0005); counts per status, audio seconds, failure reasons and the
ids of dead and cancelled tasks come from tables the same triggers keep (migration 0006), so no
read here grows with the table's history. Statements here only read them, but for one:
:meth:`Store.vacuum_queue` deletes the ``task_failure_counts`` rows whose count has fallen to zero
(reasons no failed or dead task has any more). The statuses and their transitions: ``states``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.pool import PoolProxiedConnection

from raytranscribe.config import Settings
from raytranscribe.contracts import Outcome
from raytranscribe.errors import InvalidInput, SchemaOutOfDate, Stage, StoreError
from raytranscribe.retry import RetryPolicy
from raytranscribe.store import actions, reads
from raytranscribe.store import record as recording
from raytranscribe.store import submit as submitting
from raytranscribe.store.connection import Database, Prepared
from raytranscribe.store.newtask import NewTask
from raytranscribe.store.sql import load
from raytranscribe.store.states import TaskStatus
from raytranscribe.store.url import connect_url, resolve_database_url
from raytranscribe.store.views import (
    ClaimedTask,
    OrchestratorView,
    RecordResult,
    ResultRow,
    StatusChange,
    StoreStats,
    StreamedSubmit,
    SubmitReport,
    TaskView,
    claimed_task,
)

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key serialising concurrent `db upgrade`s ("rtsc" in ASCII).
MIGRATION_LOCK_KEY = 0x72747363
SUBMIT_BATCH = submitting.SUBMIT_BATCH

QUEUE, ORCHESTRATORS, SCHEMA = map(load, ("queue", "orchestrators", "schema"))

_CLAIM = Prepared("raytranscribe_claim", ("int", "text", "float8"), QUEUE.claim.format(pairs=""))
_CLAIM_PAIRS = Prepared(
    "raytranscribe_claim_pairs",
    ("int", "text", "float8", "text[]", "text[]"),
    QUEUE.claim.format(pairs=QUEUE.claim_pairs_filter),
)


class Store:
    """PostgreSQL-backed task queue and history. Thread-safe: share one per process."""

    def __init__(self, url: str, *, settings: Settings | None = None, application_name: str = "raytranscribe"):
        """``application_name`` names this store's connections in ``pg_stat_activity``."""
        self.settings = settings if settings is not None else Settings()
        self.policy = RetryPolicy.from_settings(self.settings.retry)
        # The connections, their retry loop and the count of transient errors met.
        self.db = Database(url, self.settings.store, application_name=application_name)
        self.url = self.db.url
        self._claimed_since_vacuum = 0
        self._lock = threading.Lock()  # guards _claimed_since_vacuum

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        settings = resolve_database_url(settings)  # RAYTRANSCRIBE_DATABASE_URL_FILE, noted as a secret
        return cls(connect_url(settings), settings=settings)

    @property
    def transient_errors(self) -> int:
        """Transient database errors met, each try's (exported as raytranscribe_store_transient_errors)."""
        return self.db.transient_errors

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.db.engine.url.render_as_string(hide_password=True)!r})"

    # --- schema --------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (default head). Idempotent and safe to run concurrently."""
        from alembic import command
        from alembic.config import Config

        def tx(conn: sa.Connection) -> None:
            conn.execute(text(SCHEMA.migration_lock), {"k": MIGRATION_LOCK_KEY})
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

        self.db.run("upgrade", tx)
        log.info("database schema at %s", self.current_revision())

    def current_revision(self) -> str | None:
        def tx(conn: sa.Connection) -> str | None:
            if not conn.execute(text(SCHEMA.has_version_table)).scalar():
                return None
            return conn.execute(text(SCHEMA.version)).scalar()

        return self.db.run("current_revision", tx)

    def check_ready(self) -> None:
        """Fail fast before a run starts anything: the database answers (else, after the usual
        retries, :class:`StoreUnavailable`), lets us in (else :class:`StoreMisconfigured`, at once)
        and holds this version's schema (else :class:`SchemaOutOfDate`)."""
        from alembic.script import ScriptDirectory

        current = self.current_revision()
        scripts = ScriptDirectory(str(MIGRATIONS_DIR))
        head = scripts.get_current_head()
        if current == head:
            return
        if current is None:
            raise SchemaOutOfDate("the database has no raytranscribe schema: run `raytranscribe db upgrade`")
        if current in {script.revision for script in scripts.walk_revisions()}:
            raise SchemaOutOfDate(
                f"the database schema is at revision {current}, this raytranscribe needs {head}: "
                "run `raytranscribe db upgrade`"
            )
        # A newer raytranscribe migrated it; its changes are meant to keep older versions working.
        log.warning("database schema revision %s is newer than this raytranscribe knows (%s)", current, head)

    # --- submit --------------------------------------------------------------------------------

    def submit(self, tasks: Sequence[NewTask]) -> SubmitReport:
        """Insert all tasks in one transaction; a task whose dedupe_key exists is reported, not inserted.

        All or nothing: :class:`InvalidInput`, and nothing inserted, when two new tasks would write
        the same output stem, or a new one the stem of an unfinished task (pending, in progress or
        failed), whose outputs may still be written. A finished task's stem may be written again.
        """
        tasks = list(tasks)
        done = self.submit_stream(lambda: tasks)
        return SubmitReport(tuple(done.inserted), done.duplicate_inputs)

    def submit_stream(
        self,
        source: Callable[[], Iterable[NewTask]],
        *,
        keep_duplicates: int | None = None,
        progress: Callable[[int], None] | None = None,
        batch: int = SUBMIT_BATCH,
    ) -> StreamedSubmit:
        """:meth:`submit` for sources of any length, in bounded memory, in one transaction.

        ``source()`` is read ``batch`` tasks at a time, one batch ahead in a thread of its own while
        the database works on the one before; each is checked, copied into a staging table, checked
        against the tasks there are (those of the batches before it included) and inserted.
        Whatever ``source()`` raises while it is read (a bad manifest line), and every refusal of
        :meth:`submit`, rolls the whole of it back, earlier batches included: nothing is written.
        A transient database error re-runs the transaction, calling ``source()`` again.

        A task whose dedupe key an earlier task of the source had is a duplicate, as in :meth:`submit`.
        ``keep_duplicates``: how many duplicates' input URIs to return (None: all of them);
        ``progress(read)`` is called after each batch is inserted.
        """
        done = submitting.submit_stream(
            self.db, self.policy, source, keep_duplicates=keep_duplicates, progress=progress, batch=batch
        )
        log.info("submitted %d task(s), %d duplicate(s)", len(done.inserted), done.duplicates)
        return done

    def submitted_inputs(self, input_uris: Sequence[str]) -> set[str]:
        """Which of these inputs already have a task, whatever its engine, model or status."""
        uris = list(dict.fromkeys(input_uris))
        if not uris:
            return set()
        sql = text(QUEUE.submitted_inputs)
        return self.db.run("submitted_inputs", lambda conn: {r[0] for r in conn.execute(sql, {"u": uris})})

    # --- claim, renew, release -----------------------------------------------------------------

    def claim(
        self, n: int, owner: str, *, lease_s: float, pairs: Sequence[tuple[str, str]] | None = None
    ) -> list[ClaimedTask]:
        """Claim up to ``n`` runnable tasks (highest priority, then oldest) in one statement.

        Runnable: pending, or failed with ``retry_at <= now()``. ``pairs`` restricts to these
        (engine, model) pools. Each claim bumps ``attempt`` (the fencing token) and opens an attempt row.
        """
        if n <= 0 or (pairs is not None and not pairs):
            return []
        if lease_s <= 0:
            raise InvalidInput(f"lease_s must be > 0, got {lease_s}")
        if pairs is None:
            stmt, args = _CLAIM, (n, owner, float(lease_s))
        else:
            stmt, args = _CLAIM_PAIRS, (n, owner, float(lease_s), [e for e, _ in pairs], [m for _, m in pairs])

        claimed = self.db.run("claim", lambda raw: [claimed_task(r) for r in stmt.execute(raw, *args)], raw=True)
        if claimed and self._vacuum_due(len(claimed)):
            self.vacuum_queue()
        if log.isEnabledFor(logging.DEBUG):
            for c in claimed:
                log.debug(
                    "claimed by %s", owner, extra={"task_id": c.id, "attempt": c.attempt, "stage": Stage.FETCH.value}
                )
        return claimed

    def _vacuum_due(self, claimed: int) -> bool:
        every = self.settings.store.queue_vacuum_every
        if not every:
            return False
        with self._lock:
            self._claimed_since_vacuum += claimed
            due = self._claimed_since_vacuum >= every
            if due:
                self._claimed_since_vacuum = 0
        return due

    def vacuum_queue(self) -> bool:
        """Vacuum task_queue, task_leases and the counts now; False when it could not (busy, or not their owner).

        Every claim deletes queue rows, and each claim's ordered index scan steps over the dead
        entries left by earlier ones until a vacuum removes them: at thousands of tasks a second
        that is thousands of entries per claim within autovacuum's one-minute rounds. ``claim``
        calls this every ``store.queue_vacuum_every`` claimed tasks. SKIP_LOCKED: never wait for
        an autovacuum already at it; INDEX_CLEANUP ON: the dead index entries are the point, even
        when they are few next to a long queue.
        """

        def vacuum(raw: PoolProxiedConnection) -> bool:
            notices = raw.dbapi_connection.notices
            seen = len(notices)
            with raw.cursor() as cursor:
                cursor.execute(QUEUE.drop_zero_failure_counts)
                cursor.execute(QUEUE.vacuum_queue)
            # A table it could not lock, or may not vacuum, is skipped with a WARNING, not an error.
            return not any("skipping" in n for n in notices[seen:])

        try:
            done = self.db.run("vacuum_queue", vacuum, raw=True)
        except StoreError as exc:  # maintenance only: the queue works without it
            log.warning("queue vacuum failed: %s", exc, extra={"stage": Stage.STORE.value})
            return False
        if not done:
            log.debug("queue vacuum skipped a table (busy, or not its owner)", extra={"stage": Stage.STORE.value})
        return done

    def renew(self, leases: Sequence[tuple[int, int]], owner: str, *, lease_s: float) -> set[tuple[int, int]]:
        """Extend many leases in one statement; returns the ``(id, attempt)`` leases that were lost."""
        wanted = {(int(i), int(a)) for i, a in leases}
        if not wanted:
            return set()
        params = {
            "ids": [i for i, _ in wanted],
            "attempts": [a for _, a in wanted],
            "owner": owner,
            "lease_s": float(lease_s),
        }
        renewed = self.db.run(
            "renew", lambda conn: {(r.id, r.attempt) for r in conn.execute(text(QUEUE.renew), params)}
        )
        lost = wanted - renewed
        for task_id, attempt in sorted(lost):
            log.warning(
                "lease lost (task fenced, cancelled or reaped)",
                extra={"task_id": task_id, "attempt": attempt, "stage": Stage.LEASE.value},
            )
        return lost

    def release(self, leases: Sequence[tuple[int, int]], owner: str) -> int:
        """Hand in-flight tasks back (in_progress -> pending) without charging a retry."""
        pairs = list({(int(i), int(a)) for i, a in leases})
        if not pairs:
            return 0
        params = {
            "ids": [i for i, _ in pairs],
            "attempts": [a for _, a in pairs],
            "owner": owner,
            "stage": Stage.SHUTDOWN.value,
        }
        count = self.db.run("release", lambda conn: conn.execute(text(QUEUE.release), params).scalar_one())
        log.info("released %d of %d task(s) held by %s", count, len(pairs), owner)
        return count

    # --- outcomes ------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Outcome]) -> list[RecordResult]:
        """Record many outcomes in one transaction with a constant number of round trips.

        Fenced: an outcome changes its task only while the task is in_progress at the same attempt.
        Results come back in the order of ``outcomes``.
        """
        return recording.record(self.db, self.policy, outcomes)

    def reap(self, *, limit: int = 1000) -> list[RecordResult]:
        """Expired leases go down the failure path (stage ``lease``): a retry is charged, so a file
        that kills every worker ends dead instead of looping."""
        return recording.reap(self.db, self.policy, limit)

    # --- operator actions ----------------------------------------------------------------------

    def requeue(self, ids: Sequence[int] = (), *, status: TaskStatus | None = None) -> StatusChange:
        """failed/dead/cancelled -> pending, retries reset to 0; the attempt history stays.

        With ids, the report says which were in another status (or are no task)."""
        return actions.requeue(self.db, ids, status)

    def requeue_suspects(self, *, model: str | None = None) -> StatusChange:
        """completed tasks whose transcript is suspect -> pending, retries reset, with ``model`` instead
        of their own when given; the attempt history (each attempt's verdict too) stays, and the same
        output stem is written again."""
        return actions.requeue_suspects(self.db, model)

    def cancel(self, ids: Sequence[int]) -> StatusChange:
        """Cancel pending, in-progress or failed tasks; a worker still running one is fenced out.

        The report says which named tasks were in another status (or are no task)."""
        return actions.cancel(self.db, ids)

    # --- reading -------------------------------------------------------------------------------

    def get(self, task_id: int) -> TaskView | None:
        return reads.get(self.db, task_id)

    def list_tasks(
        self, *, status: TaskStatus | None = None, limit: int = 100, suspect: bool = False
    ) -> list[TaskView]:
        """The first ``limit`` tasks by id, of one status or of all; ``suspect``: only completed tasks
        whose transcript is suspect."""
        return reads.list_tasks(self.db, status, limit, suspect)

    def result_pages(
        self,
        statuses: Sequence[TaskStatus] = (TaskStatus.COMPLETED,),
        *,
        suspect: bool | None = None,
        page_size: int = reads.EXPORT_PAGE,
    ) -> Iterator[list[ResultRow]]:
        """Every task of ``statuses`` (only those judged suspect, or not, when ``suspect`` is given), by
        id, in pages of at most ``page_size``: what ``raytranscribe export`` writes. Each page is a
        keyset read of its own (bounded memory; no transaction held open between pages)."""
        return reads.result_pages(self.db, statuses, suspect, page_size)

    def stats(self, *, top: int = 5) -> StoreStats:
        """Counts per status, the oldest pending task's age, audio completed, the ``top`` failure reasons.

        A handful of rows whatever the table's size (the counts of migration 0006); ``top=0``, the
        orchestrator's heartbeat, skips the reasons.
        """
        return reads.stats(self.db, top)

    def suspects(self) -> int:
        """Completed tasks whose transcript is suspect: a count of their side rows (migration 0010),
        not a scan of ``tasks``."""
        return reads.suspects(self.db)

    def claimable_pairs(self) -> list[tuple[str, str]]:
        """Distinct (engine, model) with work now or in flight: the worker pools worth keeping."""
        return reads.claimable_pairs(self.db)

    def outstanding(self, pairs: Sequence[tuple[str, str]] | None = None) -> int:
        """Tasks not yet settled (pending, in progress, or waiting for a retry); 0 means drained.
        ``pairs`` counts only those (engine, model) pools, as ``claim`` does."""
        return reads.outstanding(self.db, pairs)

    def count_by_status(self, ids: Sequence[int]) -> dict[TaskStatus, int]:
        """How many of these tasks are in each status (every status present, zero included)."""
        return reads.count_by_status(self.db, ids)

    # --- orchestrator heartbeats ------------------------------------------------------------------

    def publish_orchestrator(self, owner: str, state: dict[str, Any], *, ttl_s: float) -> None:
        """Upsert what a running orchestrator wants ``status`` to show (actors, breakers, in flight)."""
        params = {"owner": owner, "state": json.dumps(state, default=str), "ttl": ttl_s}
        self.db.run("publish_orchestrator", lambda conn: conn.execute(text(ORCHESTRATORS.publish), params))

    def retire_orchestrator(self, owner: str) -> None:
        self.db.run("retire_orchestrator", lambda conn: conn.execute(text(ORCHESTRATORS.retire), {"owner": owner}))

    def orchestrators(self) -> list[OrchestratorView]:
        """Orchestrators whose last heartbeat has not expired."""
        return reads.orchestrators(self.db)
