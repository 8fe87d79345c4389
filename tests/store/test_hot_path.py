"""The claim/complete hot path: one statement each, prepared once per connection, no pre-ping.

Also the schema facts of migration 0004 that the SQLAlchemy metadata cannot express (collation,
index method, fillfactor, trigger WHEN clauses), so the migrations-vs-metadata test cannot see them.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.store import NewTask, TaskStatus
from tests.support.db import TEST_SETTINGS, complete, hot_sql

RESULT = TaskResult(3.5, "en", ("s3://bkt/out/a.json",), "hi")


def new(i: int) -> NewTask:
    return NewTask(f"s3://bkt/hot/{i:05d}.wav", f"s3://bkt/out/{i:05d}")


def _count_transactional_statements(engine: sa.Engine) -> tuple[list[str], object]:
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    return statements, count


def _executions(store) -> dict[str, int]:
    """Per prepared statement of the hot-path connection: how often the server ran it."""
    rows = hot_sql(store, "SELECT name, generic_plans + custom_plans, generic_plans FROM pg_prepared_statements")
    assert all(total == generic for _, total, generic in rows)  # planned once, then reused
    return {name: total for name, total, _ in rows}


def test_claim_and_complete_are_one_prepared_statement_each(store, make_store):
    # On the empty tables the `store` fixture left. This thread's claims and completions share one
    # connection, so the server's own count of executions per prepared statement covers every call.
    store = make_store(TEST_SETTINGS.with_(store={"pool_size": 1}))
    store.submit([new(i) for i in range(30)])
    tx_statements, tx_count = _count_transactional_statements(store.db.engine)
    try:
        first = store.claim(10, "o", lease_s=60)
        assert _executions(store) == {"raytranscribe_claim": 1}
        second = store.claim(10, "o", lease_s=60)
        results = store.record([Outcome(c.id, c.attempt, result=RESULT) for c in first + second])
        assert _executions(store) == {"raytranscribe_claim": 2, "raytranscribe_complete": 1}
        store.record([Outcome(c.id, c.attempt, result=RESULT) for c in store.claim(10, "o", lease_s=60)])
        assert _executions(store) == {"raytranscribe_claim": 3, "raytranscribe_complete": 2}
    finally:
        sa.event.remove(store.db.engine, "before_cursor_execute", tx_count)
    assert tx_statements == []  # no BEGIN/lock/COMMIT transaction on the hot path
    assert [r.task_id for r in results] == [c.id for c in first + second]
    assert {(r.applied, r.status, r.retry_at, r.reason) for r in results} == {
        (True, TaskStatus.COMPLETED, None, None)
    }
    assert store.stats().counts[TaskStatus.COMPLETED] == 30
    with store.db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT count(*), count(*) FILTER (WHERE outcome = 'completed' AND finished_at IS NOT NULL) FROM task_attempts"
        )).one()  # fmt: skip
    assert tuple(rows) == (30, 30)


def test_completion_arrays_travel_as_array_literals(store):
    """Results with quotes, backslashes, braces and NULLs survive the one-literal-per-array encoding."""
    nasty = ('a "quoted" \\ path', "{braces,commas}", "NULL", "", "é\n\t'single'")
    store.submit([new(i) for i in range(len(nasty) + 1)])
    claimed = store.claim(10, "o", lease_s=60)
    outcomes = [
        Outcome(c.id, c.attempt, result=TaskResult(float(i) + 0.25, text, (f"s3://bkt/out/{text}.json",), text),
                actor=text, node_id=None, timings=(("transcribe", 1.5),))
        for i, (c, text) in enumerate(zip(claimed, nasty))
    ] + [Outcome(claimed[-1].id, claimed[-1].attempt, result=TaskResult(float("nan"), None, (), None))]  # fmt: skip
    assert all(r.applied for r in store.record(outcomes))
    for i, (c, text) in enumerate(zip(claimed, nasty)):
        t = store.get(c.id)
        assert (t.audio_duration_s, t.language, t.output_uris, t.text_preview) == (
            float(i) + 0.25, text, (f"s3://bkt/out/{text}.json",), text or None)  # fmt: skip
        assert (t.attempts[0].actor, t.attempts[0].timings) == (text, (("transcribe", 1.5),))
    last = store.get(claimed[-1].id)
    assert (last.status, last.audio_duration_s, last.language) == (TaskStatus.COMPLETED, None, None)


def test_completion_batch_fences_each_outcome_and_keeps_order(store):
    store.submit([new(i) for i in range(4)])
    claimed = store.claim(4, "o", lease_s=60)
    a, b, c, d = claimed
    store.cancel([c.id])
    outcomes = [
        Outcome(d.id, d.attempt, result=RESULT),
        Outcome(b.id, b.attempt + 1, result=RESULT),  # wrong attempt
        Outcome(999, 1, result=RESULT),  # no such task
        Outcome(c.id, c.attempt, result=RESULT),  # cancelled meanwhile
        Outcome(a.id, a.attempt, result=RESULT),
    ]
    before_b = store.get(b.id)
    results = store.record(outcomes)
    assert [(r.task_id, r.applied, r.status, r.reason) for r in results] == [
        (d.id, True, TaskStatus.COMPLETED, None),
        (b.id, False, None, "fenced: task is in_progress at attempt 1"),
        (999, False, None, "no such task"),
        (c.id, False, None, "fenced: task is cancelled at attempt 1"),
        (a.id, True, TaskStatus.COMPLETED, None),
    ]
    assert store.get(b.id) == before_b  # a fenced outcome changes nothing, updated_at included
    assert [(x.outcome, x.finished_at is None) for x in store.get(b.id).attempts] == [(None, True)]
    assert [x.outcome for x in store.get(c.id).attempts] == ["cancelled"]
    assert [(x.outcome, x.actor) for x in store.get(a.id).attempts] == [("completed", None)]


def test_stale_pooled_connection_is_replaced_without_pre_ping(store, make_store, database_url):
    app = f"rt-stale-{uuid.uuid4().hex[:8]}"
    store = make_store(TEST_SETTINGS.with_(store={"pool_size": 1, "op_retry_base_s": 0.01}), application_name=app)
    store.submit([new(i) for i in range(4)])
    (first,) = store.claim(1, "o", lease_s=60)  # leaves an idle, prepared connection in each pool
    assert complete(store, first.id, first.attempt, RESULT).applied
    killer = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with killer.connect() as conn:
            killed = conn.execute(
                sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :a"),
                {"a": app},
            ).scalar_one()
    finally:
        killer.dispose()
    assert killed == 2  # the transactional pool's connection (submit) and the autocommit pool's
    (second,) = store.claim(1, "o", lease_s=60)  # dead connection found, pool replaced, re-run
    assert (second.id, second.attempt) == (2, 1)
    assert store.transient_errors == 1
    assert complete(store, second.id, second.attempt, RESULT).applied  # re-prepared on the new connection
    assert store.stats().counts[TaskStatus.COMPLETED] == 2


def test_prepared_statements_come_back_after_deallocate(store, make_store):
    store = make_store(TEST_SETTINGS.with_(store={"pool_size": 1}))
    store.submit([new(i) for i in range(3)])
    (a,) = store.claim(1, "o", lease_s=60)
    assert hot_sql(store, "SELECT count(*) FROM pg_prepared_statements") == [(1,)]  # the connection that prepared
    hot_sql(store, "DEALLOCATE ALL")
    (b,) = store.claim(1, "o", lease_s=60)
    results = store.record([Outcome(x.id, x.attempt, result=RESULT) for x in (a, b)])
    assert [(r.task_id, r.applied) for r in results] == [(1, True), (2, True)]
    assert store.transient_errors == 0
    names = [r[0] for r in hot_sql(store, "SELECT name FROM pg_prepared_statements ORDER BY name")]
    assert names == ["raytranscribe_claim", "raytranscribe_complete"]


def test_claim_with_pairs_uses_its_own_prepared_statement(store):
    store.submit([new(1), NewTask("s3://bkt/hot/x.wav", "s3://bkt/out/x", engine="openai-whisper", model="base")])
    got = store.claim(5, "o", lease_s=60, pairs=[("openai-whisper", "base")])
    assert [(c.engine, c.model, c.input_uri) for c in got] == [("openai-whisper", "base", "s3://bkt/hot/x.wav")]
    got = store.claim(5, "o", lease_s=60, pairs=[("faster-whisper", "tiny.en"), ("openai-whisper", "base")])
    assert [(c.engine, c.model, c.input_uri) for c in got] == [("faster-whisper", "tiny.en", "s3://bkt/hot/00001.wav")]


# --- schema facts of migration 0004 ------------------------------------------------------------


def test_index_methods_collation_and_fillfactor(store):
    with store.db.engine.connect() as conn:
        collation = conn.execute(sa.text(
            "SELECT collation_name FROM information_schema.columns WHERE table_name = 'tasks' AND column_name = :c"
        ), {"c": "dedupe_key"}).scalar_one()  # fmt: skip
        method = conn.execute(sa.text(
            "SELECT am.amname FROM pg_class i JOIN pg_am am ON am.oid = i.relam WHERE i.relname = 'ix_tasks_input_uri'"
        )).scalar_one()  # fmt: skip
        options = dict(conn.execute(sa.text(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN ('tasks', 'task_attempts', 'task_leases', "
            "'task_queue')"
        )).all())  # fmt: skip
        triggers = conn.execute(sa.text(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal ORDER BY tgname"
        )).all()  # fmt: skip
        sync_config = conn.execute(sa.text(
            "SELECT proconfig FROM pg_proc WHERE proname = 'tasks_sync_side_tables'"
        )).scalar_one()  # fmt: skip
    assert (collation, method) == ("C", "hash")
    churn = [
        "autovacuum_vacuum_scale_factor=0.0", "autovacuum_vacuum_threshold=1000",
        "autovacuum_analyze_scale_factor=0.02", "autovacuum_vacuum_cost_delay=0",
    ]  # fmt: skip
    assert options == {
        "tasks": ["fillfactor=45"], "task_attempts": ["fillfactor=60"],
        "task_leases": ["fillfactor=70", *churn], "task_queue": churn,
    }  # fmt: skip
    assert [name for name, _ in triggers] == [
        "tasks_guard_transition", "tasks_stamp_updated_at",  # row triggers, with WHEN: idle unless needed
        # statement triggers keeping task_suspects (migration 0010)
        "tasks_suspects_deleted", "tasks_suspects_inserted", "tasks_suspects_truncated", "tasks_suspects_updated",
        "tasks_sync_deleted", "tasks_sync_inserted", "tasks_sync_truncated", "tasks_sync_updated",
    ]  # fmt: skip
    definitions = dict(triggers)
    assert "WHEN (" in definitions["tasks_guard_transition"] and "WHEN (" in definitions["tasks_stamp_updated_at"]
    for name in ("tasks_sync_inserted", "tasks_sync_updated", "tasks_sync_deleted", "tasks_suspects_inserted",
                 "tasks_suspects_updated", "tasks_suspects_deleted"):
        assert "FOR EACH STATEMENT" in definitions[name] and "REFERENCING" in definitions[name]
    assert sync_config == ["enable_seqscan=off"]  # its plans, made once per session, stay index probes


def test_updated_at_is_stamped_unless_the_update_sets_it(store):
    store.submit([new(1)])
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE tasks SET updated_at = '2001-01-01T00:00:00Z'"))
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE tasks SET priority = 7"))  # an ad-hoc update: the trigger stamps it
        stamped, now = conn.execute(sa.text("SELECT updated_at, now() FROM tasks")).one()
    assert stamped == now
    (c,) = store.claim(1, "o", lease_s=60)
    with store.db.engine.connect() as conn:
        claimed_at, started = conn.execute(sa.text("SELECT updated_at, started_at FROM tasks")).one()
    assert claimed_at == started  # set by the claim statement itself, in its own transaction
    assert claimed_at > stamped


def test_threads_that_end_give_their_hot_path_connection_back(store, make_store, database_url):
    """Each thread holds one hot-path connection; one that ended returns it, so the pool never runs dry."""
    import threading

    app = f"rt-threads-{uuid.uuid4().hex[:8]}"
    # Two autocommit connections at most; it only claims (tasks are submitted through ``store``), so
    # every connection named ``app`` is a hot-path one.
    claimer = make_store(TEST_SETTINGS.with_(store={"pool_size": 1}), application_name=app)
    store.submit([new(i) for i in range(12)])
    got: list[int] = []

    def claim_once() -> None:
        got.extend(c.id for c in claimer.claim(1, "o", lease_s=60))

    for _ in range(12):  # one after another: each new thread finds the last one's connection free
        t = threading.Thread(target=claim_once)
        t.start()
        t.join(30)
        assert not t.is_alive(), "a claim waited for a connection that an ended thread still held"
    assert sorted(got) == list(range(1, 13))
    # One backend served all twelve threads: each ended thread's connection went back to the pool and
    # the next thread took it up; the last thread's stays open until the next checkout sweeps it.
    watcher = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with watcher.connect() as conn:
            backends = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"), {"a": app}
            ).scalar_one()
    finally:
        watcher.dispose()
    assert backends == 1
