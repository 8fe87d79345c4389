"""Submitting tasks: a source streamed in batches, each copied into a staging table, checked and
inserted, all in one transaction (see queue.sql's note on submit)."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import queue
import re
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy import text

from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.errors import InvalidInput
from raytranscribe.retry import RetryPolicy
from raytranscribe.store.connection import Database
from raytranscribe.store.newtask import SUBMIT_LOCK_KEY, NewTask, refusal_of_shared_stem
from raytranscribe.store.sql import load
from raytranscribe.store.states import UNFINISHED
from raytranscribe.store.views import StreamedSubmit

SQL = load("queue")
SUBMIT_BATCH = 10_000  # tasks per COPY into the staging table: what the client holds, twice (one read ahead)

T = TypeVar("T")

# COPY's text format: backslash, tab, newline and carriage return escaped, the rest as is.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")


def _copy_text(value: str) -> str:
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


@functools.lru_cache(maxsize=256)
def _copy_shared(engine: str, model: str, options: TranscribeOptions) -> str:
    """The engine, model and options columns of a staging row: the same for most rows of a submit."""
    return f"{_copy_text(engine)}\t{_copy_text(model)}\t{_copy_text(_options_json(options))}"


@functools.lru_cache(maxsize=256)
def _options_json(options: TranscribeOptions) -> str:
    """The options column's JSON, once per distinct options (a manifest's lines mostly share one)."""
    return json.dumps(options.to_dict())


class Batch(NamedTuple):
    rows: str  # COPY text of the first occurrence of each dedupe key
    keys: list[str]  # every task's dedupe key, in order
    inputs: list[str]  # input URIs, in order


def batches(source: Callable[[], Iterable[NewTask]], size: int, policy: RetryPolicy) -> Iterator[Batch]:
    """Each batch: the COPY text of its first occurrences, and every task's dedupe key and input
    (the report needs no more). Two new tasks of the batch on one stem are refused here."""
    read = 0
    it = iter(source())  # called here, in the read-ahead thread
    while chunk := list(itertools.islice(it, size)):
        rows = []
        first: set[str] = set()
        by_stem: dict[str, NewTask] = {}
        for t in chunk:
            read += 1
            key = t.dedupe_key
            if key in first:  # a repeat inside the batch: a duplicate, nothing to stage
                continue
            first.add(key)
            claimant = by_stem.setdefault(t.output_uri, t)
            if claimant is not t:
                raise refusal_of_shared_stem(claimant.input_uri, t.input_uri, t.output_uri)
            mr = policy.max_retries if t.max_retries is None else t.max_retries
            bf = float(policy.backoff_factor if t.backoff_factor is None else t.backoff_factor)
            rows.append(
                f"{read}\t{_copy_text(t.input_uri)}\t{_copy_text(t.output_uri)}\t"
                f"{_copy_shared(t.engine, t.model, t.options)}\t{t.priority}\t{mr}\t{bf!r}\t{key}\n"
            )
        yield Batch("".join(rows), [t.dedupe_key for t in chunk], [t.input_uri for t in chunk])


class _Tally:
    """What a submit has done so far: inserted ids, duplicates counted, the first inputs of them kept."""

    def __init__(self, keep_duplicates: int | None):
        self.read = self.duplicates = 0
        self.inserted = array("q")
        self.kept: list[str] = []
        self.keep = keep_duplicates

    def add(self, b: Batch, ids: dict[str, int]) -> None:
        for key, input_uri in zip(b.keys, b.inputs):
            task_id = ids.pop(key, None)  # pop: a repeat inside the batch is a duplicate too
            if task_id is not None:
                self.inserted.append(task_id)
                continue
            self.duplicates += 1
            if self.keep is None or len(self.kept) < self.keep:
                self.kept.append(input_uri)
        self.read += len(b.keys)

    def report(self) -> StreamedSubmit:
        return StreamedSubmit(self.read, self.inserted, self.duplicates, tuple(self.kept))


def submit_stream(
    db: Database,
    policy: RetryPolicy,
    source: Callable[[], Iterable[NewTask]],
    *,
    keep_duplicates: int | None,
    progress: Callable[[int], None] | None,
    batch: int,
) -> StreamedSubmit:
    """See :meth:`Store.submit_stream`."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    unfinished = [s.value for s in UNFINISHED]

    def tx(conn: sa.Connection) -> StreamedSubmit:
        conn.execute(text(SQL.submit_lock), {"k": SUBMIT_LOCK_KEY})
        conn.execute(text(SQL.submit_planner))
        conn.execute(text(SQL.batch_table))
        raw = conn.connection.dbapi_connection
        assert raw is not None  # a checked-out connection has one
        tally = _Tally(keep_duplicates)
        reader, copy = _read_ahead(batches(source, batch, policy)), raw.cursor()
        with contextlib.closing(reader) as ahead, contextlib.closing(copy):
            for b in ahead:
                if tally.read:
                    conn.execute(text(SQL.next_batch))
                data = io.StringIO(b.rows)
                db.raw_call(raw, lambda: copy.copy_expert(SQL.batch_copy, data))
                conn.execute(text(SQL.drop_duplicates))
                _check_unfinished_stems(conn, unfinished, tally.inserted)
                tally.add(b, {r.dedupe_key: r.id for r in conn.execute(text(SQL.submit_insert))})
                if progress is not None:
                    progress(tally.read)
        return tally.report()

    return db.run("submit", tx)


def _check_unfinished_stems(conn: sa.Connection, unfinished: list[str], inserted: array[int]) -> None:
    """Refuse the batch in the staging table when a task of it would write the stem of an unfinished task."""
    row = conn.execute(text(SQL.unfinished_stems), {"s": unfinished}).first()
    if row is None:
        return
    if row.id in inserted:  # an earlier batch's task: two new tasks on one stem
        raise refusal_of_shared_stem(row.input_uri, row.new_input, row.output_uri)
    who = "the same input" if row.input_uri == row.new_input else repr(row.input_uri)
    raise InvalidInput(
        f"input {row.new_input!r} would write {row.output_uri}.*, which task {row.id} ({who}, "
        f"{row.status}) may still write; wait for it, cancel it, or give this input another output"
    )


_READ_AHEAD_DONE = object()


def _read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, each produced while the caller works on the one before, in a thread of their own:
    a submit's database round trips (psycopg2 releases the GIL while it waits) overlap the reading
    and parsing of the next batch. What producing raises is raised here; closing this stops it."""
    handoff: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_READ_AHEAD_DONE, None))
        except BaseException as exc:  # handed to the caller's thread, raised there
            put((_READ_AHEAD_DONE, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=produce, name="submit-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _READ_AHEAD_DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        reader.join()
