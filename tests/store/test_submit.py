"""Submit against a real PostgreSQL: formats normalised into the dedupe key, output stems that two
tasks would share refused (inside a batch, and against unfinished tasks), the int4 limits."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
import sqlalchemy as sa

from raytranscribe.contracts import TaskResult
from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.errors import Failure, InvalidInput, Stage
from raytranscribe.store import NewTask, TaskStatus
from raytranscribe.store.newtask import SUBMIT_LOCK_KEY
from tests.support.db import complete, fail

IN = "s3://bkt/in/dedupe.wav"
STEM = "s3://bkt/out/dedupe"
TRANSIENT = Failure(Stage.DOWNLOAD, "ServerError", "503", transient=True, http_status=503)
PERMANENT = Failure(Stage.DOWNLOAD, "InputMissing", "404", transient=False, http_status=404)


def task(formats: tuple[str, ...], input_uri: str = IN, stem: str = STEM, **kw) -> NewTask:
    return NewTask(input_uri, stem, options=TranscribeOptions(formats=formats), **kw)


def test_formats_are_one_order_without_repeats():
    assert task(("txt", "json", "txt")).options.formats == ("json", "txt")
    assert task(("txt", "json")).dedupe_key == task(("json", "txt")).dedupe_key == task(("json", "json", "txt")).dedupe_key
    assert task(("txt",)).dedupe_key == task(("txt", "txt")).dedupe_key
    assert task(("txt",)).dedupe_key != task(("txt", "json")).dedupe_key
    # The default tuple is already canonical: rows stored before keep their dedupe keys.
    default = NewTask(IN, STEM)
    assert default.options.formats == ("json", "srt", "vtt", "txt")
    before = json.dumps([IN, "faster-whisper", "tiny.en", TranscribeOptions().to_dict()],
                        sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    assert default.dedupe_key == hashlib.sha256(before.encode()).hexdigest()


def test_the_issues_four_submissions_on_one_input_make_one_task(store):
    """--formats txt, txt,txt, txt,json and json,txt on one input gave four tasks writing one dedupe.txt."""
    assert store.submit([task(("txt",))]).inserted == (1,)
    assert store.submit([task(("txt", "txt"))]).duplicates == (IN,)
    for formats in (("txt", "json"), ("json", "txt")):
        with pytest.raises(InvalidInput) as info:
            store.submit([task(formats)])
        assert str(info.value) == (
            f"input {IN!r} would write {STEM}.*, which task 1 (the same input, pending) may still write; "
            "wait for it, cancel it, or give this input another output"
        )
    assert [(t.id, t.options.formats) for t in store.list_tasks()] == [(1, ("txt",))]


def test_two_new_tasks_with_one_stem_are_refused_naming_both(store):
    with pytest.raises(InvalidInput) as info:
        store.submit([task(("txt",), "s3://bkt/a/t.wav"), NewTask("s3://bkt/ok.wav", "s3://bkt/out/ok"),
                      task(("txt",), "s3://bkt/b/t.mp3")])  # fmt: skip
    assert str(info.value) == (
        f"inputs 's3://bkt/a/t.wav' and 's3://bkt/b/t.mp3' would both write {STEM}.*; give each its own output"
    )
    with pytest.raises(InvalidInput) as info:
        store.submit([task(("txt",)), task(("txt",), engine="openai-whisper")])
    assert str(info.value).startswith(f"input {IN!r} is given twice with different settings")
    assert store.stats().total == 0  # all or nothing
    # The same task twice is a duplicate, not a collision.
    assert store.submit([task(("txt",)), task(("txt",))]).duplicates == (IN,)


def _to_status(store, task_id: int, status: TaskStatus) -> None:
    if status is TaskStatus.PENDING:
        return
    if status is TaskStatus.CANCELLED:
        store.cancel([task_id])
        return
    (claimed,) = store.claim(1, "orch-test", lease_s=60)
    assert claimed.id == task_id
    if status is TaskStatus.COMPLETED:
        complete(store, task_id, claimed.attempt, TaskResult(1.0, "en", (f"{STEM}.txt",), "hi"))
    elif status is TaskStatus.FAILED:
        fail(store, task_id, claimed.attempt, TRANSIENT)
    elif status is TaskStatus.DEAD:
        fail(store, task_id, claimed.attempt, PERMANENT)
    assert store.get(task_id).status is status


@pytest.mark.parametrize("status", list(TaskStatus))
def test_a_stem_is_free_once_its_task_is_finished(store, status):
    (first,) = store.submit([task(("txt",), "s3://bkt/a/dedupe.wav")]).inserted
    _to_status(store, first, status)
    other = task(("txt",), "s3://bkt/b/dedupe.mp3")
    if status in (TaskStatus.PENDING, TaskStatus.IN_PROGRESS, TaskStatus.FAILED):
        with pytest.raises(InvalidInput) as info:
            store.submit([NewTask("s3://bkt/c.wav", "s3://bkt/out/c"), other])
        assert str(info.value) == (
            f"input 's3://bkt/b/dedupe.mp3' would write {STEM}.*, which task {first} ('s3://bkt/a/dedupe.wav', "
            f"{status.value}) may still write; wait for it, cancel it, or give this input another output"
        )
        assert store.stats().total == 1  # the good task of that batch was not inserted either
    else:  # completed, dead, cancelled: nothing will write there any more
        assert len(store.submit([other]).inserted) == 1


def test_a_duplicate_writes_nothing_so_it_collides_with_nothing(store):
    a, b = store.submit([NewTask("s3://bkt/a.wav", "s3://bkt/out/a"), NewTask("s3://bkt/b.wav", "s3://bkt/out/b")]).inserted
    # a.wav again, now aimed at b's stem: the same task as `a`, skipped, so b's outputs are safe.
    report = store.submit([NewTask("s3://bkt/a.wav", "s3://bkt/out/b")])
    assert (report.inserted, report.duplicates) == ((), ("s3://bkt/a.wav",))


def test_a_concurrent_submit_of_the_same_stem_waits_and_is_refused(store, database_url):
    """The check and the insert are one step: a second submit waits for the first one's commit."""
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    outcome: list[BaseException | object] = []
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("BEGIN"))
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SUBMIT_LOCK_KEY})
            # What a first submit would have written, not committed yet.
            conn.execute(
                sa.text("INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key) "
                        "VALUES ('s3://bkt/a/dedupe.wav', :o, 'faster-whisper', 'tiny.en', 3, 2.0, 'first')"),
                {"o": STEM},
            )  # fmt: skip

            def second() -> None:
                try:
                    outcome.append(store.submit([task(("txt",), "s3://bkt/b/dedupe.wav")]))
                except BaseException as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=second, daemon=True)
            thread.start()
            thread.join(1.0)
            assert thread.is_alive() and not outcome  # waiting on the lock
            conn.execute(sa.text("COMMIT"))
        thread.join(30)
    finally:
        engine.dispose()
    (result,) = outcome
    assert isinstance(result, InvalidInput), result
    assert "which task 1 ('s3://bkt/a/dedupe.wav', pending) may still write" in str(result)
    assert store.stats().total == 1


def test_int4_limits_are_stored_exactly(store):
    ids = store.submit([
        NewTask("s3://bkt/a.wav", "s3://bkt/out/a", priority=2**31 - 1, max_retries=2**31 - 1),
        NewTask("s3://bkt/b.wav", "s3://bkt/out/b", priority=-(2**31), backoff_factor=1e308),
    ]).inserted  # fmt: skip
    a, b = (store.get(i) for i in ids)
    assert (a.priority, a.max_retries, b.priority, b.backoff_factor) == (2**31 - 1, 2**31 - 1, -(2**31), 1e308)


def test_each_batch_probes_indexes_not_the_history(store):
    """Each batch of a submit finds its duplicates through uq_tasks_dedupe_key and the unfinished tasks of
    its stems through ix_tasks_output_uri (0007), not by scanning the history, however the statistics stand."""
    from raytranscribe.store.sql import load

    queue = load("queue")

    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in range(2000)])
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE tasks"))
        conn.execute(sa.text(queue.submit_planner))
        conn.execute(sa.text(queue.batch_table))
        conn.execute(sa.text(
            "INSERT INTO submit_batch VALUES (1, 's3://bkt/in/x.wav', 's3://bkt/out/7', 'faster-whisper', "
            "'tiny.en', '{}', 0, 3, 2.0, 'k')"))  # fmt: skip

        def plan(sql: str) -> str:
            rows = conn.execute(sa.text("EXPLAIN " + sql), {"s": ["pending", "in_progress", "failed"]})
            return "\n".join(r[0] for r in rows)

        duplicates, stems = plan(queue.drop_duplicates), plan(queue.unfinished_stems)
    assert "uq_tasks_dedupe_key" in duplicates and "Seq Scan on tasks" not in duplicates, duplicates
    assert "ix_tasks_output_uri" in stems and "Seq Scan on tasks" not in stems, stems


# --- streamed submits: batches of one transaction ------------------------------------------------


def numbered(i: int, **kw) -> NewTask:
    return NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}", **kw)


def test_a_stream_longer_than_a_batch_keeps_its_order_and_finds_repeats_across_batches(store):
    tasks = [numbered(i) for i in range(1, 8)] + [numbered(2), numbered(8), numbered(8), numbered(5)]
    seen: list[int] = []
    done = store.submit_stream(lambda: iter(tasks), batch=3, progress=seen.append)
    assert (done.read, list(done.inserted), done.duplicates) == (11, list(range(1, 9)), 3)
    assert done.duplicate_inputs == ("s3://bkt/in/2.wav", "s3://bkt/in/8.wav", "s3://bkt/in/5.wav")
    assert seen == [3, 6, 9, 11]  # after each batch
    assert [t.input_uri for t in store.list_tasks()] == [f"s3://bkt/in/{i}.wav" for i in range(1, 9)]
    # Again, all duplicates, a few kept by name and the rest counted.
    again = store.submit_stream(lambda: iter(tasks), batch=4, keep_duplicates=2)
    assert (len(again.inserted), again.duplicates) == (0, 11)
    assert again.duplicate_inputs == ("s3://bkt/in/1.wav", "s3://bkt/in/2.wav")


def test_a_bad_task_in_a_later_batch_leaves_nothing_written(store):
    def source():
        yield from (numbered(i) for i in range(1, 8))  # batches of three, two inserted before the error
        raise InvalidInput("line 8: bad")

    with pytest.raises(InvalidInput, match="line 8: bad"):
        store.submit_stream(source, batch=3)
    assert store.stats().total == 0
    assert len(store.submit([numbered(1)]).inserted) == 1  # the sequence moved on; nothing else did


def test_a_stem_shared_across_batches_is_refused_naming_both(store):
    other = NewTask("s3://bkt/elsewhere/3.mp3", "s3://bkt/out/3")
    with pytest.raises(InvalidInput) as info:
        store.submit_stream(lambda: iter([numbered(i) for i in range(1, 6)] + [other]), batch=2)
    assert str(info.value) == (
        "inputs 's3://bkt/in/3.wav' and 's3://bkt/elsewhere/3.mp3' would both write s3://bkt/out/3.*; "
        "give each its own output"
    )
    twice = numbered(1, options=TranscribeOptions(formats=("txt",)))
    with pytest.raises(InvalidInput, match="input 's3://bkt/in/1.wav' is given twice with different settings"):
        store.submit_stream(lambda: iter([numbered(i) for i in range(1, 6)] + [twice]), batch=2)
    assert store.stats().total == 0


def test_a_transient_error_mid_stream_reads_the_source_again(store, database_url):
    """The transaction is re-run from the start (a fresh iterator), and the report counts each task once."""
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    calls: list[int] = []

    def source():
        calls.append(len(calls))
        for i in range(1, 7):
            if i == 5 and len(calls) == 1:  # the first reading: kill this submit's connection mid-way
                with engine.connect() as conn:
                    conn.execute(sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%submit_%' "
                        "AND pid <> pg_backend_pid() AND datname = current_database()"))  # fmt: skip
            yield numbered(i)

    try:
        done = store.submit_stream(source, batch=2)
    finally:
        engine.dispose()
    assert len(calls) == 2
    assert (done.read, len(done.inserted), done.duplicates) == (6, 6, 0)
    assert store.stats().total == 6


def test_what_copy_would_read_as_syntax_is_stored_as_given(store):
    """Tabs, newlines, carriage returns and backslashes in keys (S3 allows them) reach the row unchanged."""
    odd = ["s3://bkt/in/tab\there.wav", "s3://bkt/in/new\nline\r.wav", "s3://bkt/in/back\\slash\\N.wav",
           "s3://bkt/in/ünï cødé.wav"]  # fmt: skip
    tasks = [NewTask(uri, uri.replace("/in/", "/out/").rsplit(".", 1)[0], model="dir\\with\ttab") for uri in odd]
    ids = store.submit(tasks).inserted
    assert [(store.get(i).input_uri, store.get(i).output_uri, store.get(i).model) for i in ids] == [
        (t.input_uri, t.output_uri, t.model) for t in tasks]  # fmt: skip
    assert store.submit(tasks).duplicates == tuple(odd)  # the stored dedupe keys are the ones computed here
