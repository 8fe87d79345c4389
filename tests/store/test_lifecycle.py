"""The task state machine against a real PostgreSQL: submit, claim, fence, retry, reap, requeue, cancel."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from raytranscribe.contracts import Outcome, Release, TaskResult
from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.errors import Failure, InvalidInput, InvalidURI, Stage
from raytranscribe.store import NewTask, Store, TaskStatus
from tests.support.db import TEST_SETTINGS, complete, fail

UNAVAILABLE = Failure(Stage.DOWNLOAD, "ServerError", "503 Service Unavailable", transient=True, http_status=503)
NOT_FOUND = Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found for s3://bkt/a.wav", transient=False, http_status=404)


def new(i: int, **kw) -> NewTask:
    return NewTask(f"s3://bkt/in/{i:05d}.wav", f"s3://bkt/out/{i:05d}", **kw)


def result(i: int = 0) -> TaskResult:
    return TaskResult(12.5, "en", (f"s3://bkt/out/{i:05d}.json", f"s3://bkt/out/{i:05d}.txt"), "hello world")


def db_now(store: Store):
    with store.db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT now()")).scalar_one()


def attempts_of(store: Store, task_id: int) -> list[tuple]:
    return [(a.attempt, a.outcome, a.stage, a.error_class) for a in store.get(task_id).attempts]


# --- submit ------------------------------------------------------------------------------------


def test_submit_inserts_and_reports_duplicates(store):
    first = store.submit([new(1), new(2)])
    assert first.inserted == (1, 2) and first.duplicates == ()
    # Same input, engine, model and options: a duplicate even with another output stem.
    again = store.submit([
        NewTask("s3://bkt/in/00001.wav", "s3://bkt/elsewhere/x"),
        new(3),
        new(3),  # repeated inside the batch
        # other options, other engine: other tasks (with outputs of their own: task 1 is unfinished)
        NewTask("s3://bkt/in/00001.wav", "s3://bkt/out/de/00001", options=TranscribeOptions(language="de")),
        NewTask("s3://bkt/in/00001.wav", "s3://bkt/out/openai/00001", engine="openai-whisper"),
    ])  # fmt: skip
    assert again.inserted == (3, 4, 5)
    assert again.duplicates == ("s3://bkt/in/00001.wav", "s3://bkt/in/00003.wav")
    assert store.stats().counts[TaskStatus.PENDING] == 5
    assert store.get(4).options.language == "de"
    assert store.get(5).engine == "openai-whisper"


def test_submit_writes_policy_defaults_and_overrides(store):
    store.submit([new(1), new(2, max_retries=7, backoff_factor=1.5, priority=9, model="base")])
    a, b = store.get(1), store.get(2)
    assert (a.max_retries, a.backoff_factor, a.priority, a.model) == (3, 2.0, 0, "tiny.en")
    assert (b.max_retries, b.backoff_factor, b.priority, b.model) == (7, 1.5, 9, "base")
    assert (a.status, a.attempt, a.retries, a.retry_at, a.lease_owner) == (TaskStatus.PENDING, 0, 0, None, None)


def test_dedupe_key_is_stable_and_sensitive_to_options():
    assert new(1).dedupe_key == new(1).dedupe_key
    assert len(new(1).dedupe_key) == 64
    assert new(1).dedupe_key != new(1, options=TranscribeOptions(beam_size=1)).dedupe_key
    assert new(1).dedupe_key != new(1, model="base").dedupe_key
    assert new(1).dedupe_key == NewTask("s3://bkt/in/00001.wav", "s3://other/x").dedupe_key


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_uri": "http://bkt/a.wav"}, InvalidURI, "invalid input URI 'http://bkt/a.wav': must start with 's3://'"),
        ({"input_uri": "s3://bkt/dd/../evil/x.wav"}, InvalidURI, "key 'dd/../evil/x.wav' has a '..' segment"),
        ({"output_uri": "s3://bkt/a/../../in/x"}, InvalidURI, "invalid output URI 's3://bkt/a/../../in/x': key"),
        ({"output_uri": "s3://bkt/out//a"}, InvalidURI, "has an empty segment"),
        ({"input_uri": "s3://Bad_Bucket/a.wav"}, InvalidURI, "may contain only lowercase"),
        ({"input_uri": "s3://ab/a.wav"}, InvalidURI, "must be 3 to 63 characters long (got 2)"),
        ({"input_uri": "s3://bkt/"}, InvalidURI, "object key is empty"),
        ({"input_uri": "s3://bkt/folder/"}, InvalidURI, "ends with '/'"),
        ({"input_uri": "s3://192.168.1.1/a.wav"}, InvalidURI, "IP address"),
        ({"output_uri": "s3://bkt"}, InvalidURI, "invalid output URI"),
        ({"engine": "whisper-cpp"}, InvalidInput, "unknown engine 'whisper-cpp'"),
        ({"model": " "}, InvalidInput, "model must be a non-empty name"),
        ({"max_retries": -1}, InvalidInput, "max_retries must be an integer >= 0, got -1"),
        ({"backoff_factor": 0.5}, InvalidInput, "backoff_factor must be a finite number >= 1, got 0.5"),
        ({"backoff_factor": float("nan")}, InvalidInput, "backoff_factor must be a finite number >= 1, got nan"),
        ({"backoff_factor": float("inf")}, InvalidInput, "backoff_factor must be a finite number >= 1, got inf"),
        ({"backoff_factor": 10**400}, InvalidInput, "backoff_factor must be a finite number >= 1"),
        ({"priority": "high"}, InvalidInput, "priority must be an integer"),
        # the int4 columns' range, not a database error halfway through a submit
        ({"priority": 2**31}, InvalidInput, "priority must be an integer from -2147483648 to 2147483647, got 2147483648"),
        ({"priority": -(2**31) - 1}, InvalidInput, "priority must be an integer from -2147483648 to 2147483647"),
        ({"max_retries": 2**31}, InvalidInput, "max_retries must be an integer from 0 to 2147483647, got 2147483648"),
    ],
)
def test_new_task_validation(kwargs, error, message):
    fields = {"input_uri": "s3://bkt/a.wav", "output_uri": "s3://bkt/out/a"} | kwargs
    with pytest.raises(error) as info:
        NewTask(**fields)
    assert message in str(info.value)


def test_submitted_inputs(store):
    store.submit([new(1), new(2, engine="openai-whisper")])
    asked = ["s3://bkt/in/00001.wav", "s3://bkt/in/00002.wav", "s3://bkt/in/00009.wav"]
    assert store.submitted_inputs(asked) == {"s3://bkt/in/00001.wav", "s3://bkt/in/00002.wav"}
    assert store.submitted_inputs([]) == set()


# --- claim -------------------------------------------------------------------------------------


def test_claim_order_limit_lease_and_attempt_rows(store):
    store.submit([new(1), new(2, priority=5), new(3), new(4, priority=5)])
    before = db_now(store)
    claimed = store.claim(3, "orch-a", lease_s=60)
    assert [(c.id, c.attempt, c.priority) for c in claimed] == [(2, 1, 5), (4, 1, 5), (1, 1, 0)]
    lease = claimed[0].lease_expires_at - before
    assert 59 <= lease.total_seconds() <= 65
    t = store.get(2)
    assert (t.status, t.lease_owner, t.attempt) == (TaskStatus.IN_PROGRESS, "orch-a", 1)
    assert [(a.attempt, a.worker, a.outcome, a.finished_at) for a in t.attempts] == [(1, "orch-a", None, None)]
    assert [c.id for c in store.claim(10, "orch-b", lease_s=60)] == [3]
    assert store.claim(10, "orch-b", lease_s=60) == []


def test_claim_filters_engine_model_pairs(store):
    store.submit([new(1), new(2, model="base"), new(3, engine="openai-whisper", model="base")])
    assert store.claimable_pairs() == [("faster-whisper", "base"), ("faster-whisper", "tiny.en"), ("openai-whisper", "base")]
    got = store.claim(10, "o", lease_s=60, pairs=[("openai-whisper", "base"), ("faster-whisper", "tiny.en")])
    assert sorted(c.id for c in got) == [1, 3]
    assert store.claim(10, "o", lease_s=60, pairs=[]) == []
    assert [c.id for c in store.claim(10, "o", lease_s=60, pairs=[("faster-whisper", "base")])] == [2]


def test_claim_carries_options(store):
    opts = TranscribeOptions(language="fr", formats=("srt", "txt"), beam_size=2)
    store.submit([new(1, options=opts, max_retries=4, backoff_factor=3.0)])
    (c,) = store.claim(1, "o", lease_s=5)
    assert (c.options, c.max_retries, c.backoff_factor, c.retries) == (opts, 4, 3.0, 0)
    assert (c.input_uri, c.output_uri, c.engine, c.model) == (
        "s3://bkt/in/00001.wav", "s3://bkt/out/00001", "faster-whisper", "tiny.en")  # fmt: skip


# --- complete, fencing -------------------------------------------------------------------------


def test_complete_records_result_summary(store):
    store.submit([new(1)])
    (c,) = store.claim(1, "o", lease_s=60)
    long_preview = TaskResult(12.5, "en", ("s3://bkt/out/00001.json",), "x" * 2000)
    r = complete(store, c.id, c.attempt, long_preview, actor="actor-1", node="node-9",
                 timings=[("download", 0.25), ("transcribe", 1.5)])  # fmt: skip
    assert (r.applied, r.status, r.retry_at, r.reason) == (True, TaskStatus.COMPLETED, None, None)
    t = store.get(1)
    assert (t.status, t.audio_duration_s, t.language, t.output_uris) == (
        TaskStatus.COMPLETED, 12.5, "en", ("s3://bkt/out/00001.json",))  # fmt: skip
    assert t.text_preview == "x" * 500
    assert t.lease_owner is None and t.lease_expires_at is None and t.completed_at is not None
    (a,) = t.attempts
    assert (a.outcome, a.actor, a.node, a.timings) == ("completed", "actor-1", "node-9", (("download", 0.25), ("transcribe", 1.5)))
    assert a.finished_at is not None
    assert store.outstanding() == 0


def test_stale_attempt_is_fenced_out(store):
    store.submit([new(1)])
    (old,) = store.claim(1, "o1", lease_s=0.05)
    time.sleep(0.1)
    (reaped,) = store.reap()
    assert (reaped.applied, reaped.status) == (True, TaskStatus.FAILED)
    time.sleep(0.25)  # retry delay is at most 0.2 s in the test settings
    (new_claim,) = store.claim(1, "o2", lease_s=60)
    assert new_claim.attempt == 2
    before = store.get(1)

    stale_ok = complete(store, old.id, old.attempt, result(1))
    stale_fail = fail(store, old.id, old.attempt, UNAVAILABLE)
    for r in (stale_ok, stale_fail):
        assert (r.applied, r.status, r.retry_at) == (False, None, None)
        assert r.reason == "fenced: task is in_progress at attempt 2"
    after = store.get(1)
    assert after == before  # not a single column changed, updated_at included

    fresh = complete(store, new_claim.id, new_claim.attempt, result(1))
    assert (fresh.applied, fresh.status) == (True, TaskStatus.COMPLETED)
    again = complete(store, new_claim.id, new_claim.attempt, result(1))  # a repeated complete is harmless
    assert (again.applied, again.reason) == (False, "fenced: task is completed at attempt 2")
    assert attempts_of(store, 1) == [(1, "failed", "lease", "LeaseExpired"), (2, "completed", None, None)]


def test_unknown_task_is_reported_not_raised(store):
    r = complete(store, 999, 1, result())
    assert (r.task_id, r.applied, r.status, r.reason) == (999, False, None, "no such task")


# --- failures and retries ----------------------------------------------------------------------


def test_transient_failure_schedules_retry_within_jitter_bounds(make_store, store):
    slow = make_store(TEST_SETTINGS.with_(retry={"base_delay_s": 10.0, "max_delay_s": 100.0}))
    slow.submit([new(i) for i in range(20)] + [new(100, backoff_factor=3.0)])
    claimed = slow.claim(21, "o", lease_s=60)
    # The delay counts from the record's transaction, somewhere between these two clock readings.
    before = db_now(slow)
    results = slow.record([Outcome(c.id, c.attempt, failure=UNAVAILABLE) for c in claimed])
    took = (db_now(slow) - before).total_seconds()
    delays = [(r.retry_at - before).total_seconds() for r in results]
    assert all(r.applied and r.status is TaskStatus.FAILED for r in results)
    assert all(0 <= d <= 10.0 + took for d in delays), delays  # ceiling(0) = base_delay = 10 s
    assert len({round(d, 3) for d in delays}) > 5  # full jitter: not one fixed delay
    t = slow.get(1)
    assert (t.status, t.retries, t.failure_reason, t.last_error) == (
        TaskStatus.FAILED, 1, "download: 503 Service Unavailable", "ServerError: 503 Service Unavailable (HTTP 503)")  # fmt: skip
    assert t.retry_at == results[0].retry_at and t.lease_owner is None
    (a,) = t.attempts
    assert (a.outcome, a.stage, a.error_class, a.http_status, a.decision) == (
        "failed", "download", "ServerError", 503, "transient error, retry 1 of 3")  # fmt: skip
    # A failed task is not claimable before retry_at. (Full jitter may draw a delay close to 0, so
    # the delays are pushed out first: this checks the claim's rule, not the dice.)
    with slow.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE tasks SET retry_at = now() + interval '1 hour' WHERE status = 'failed'"))
    assert slow.claim(50, "o", lease_s=60) == []
    # Second failure of the task with backoff 3: ceiling = 10 * 3 ** 1 = 30 s.
    with slow.db.engine.begin() as conn:  # make the retry due now, as if the delay had passed
        conn.execute(sa.text("UPDATE tasks SET retry_at = now() WHERE id = 21"))
    (c,) = slow.claim(1, "o", lease_s=60)
    assert (c.id, c.attempt, c.retries) == (21, 2, 1)
    before = db_now(slow)
    r = fail(slow, c.id, c.attempt, UNAVAILABLE)
    took = (db_now(slow) - before).total_seconds()
    assert 0 <= (r.retry_at - before).total_seconds() <= 30.0 + took
    assert slow.get(21).retries == 2


def test_dead_after_max_retries(store):
    store.submit([new(1, max_retries=2)])
    outcomes = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        claimed = store.claim(1, "o", lease_s=60)
        if not claimed:
            time.sleep(0.02)
            continue
        (c,) = claimed
        r = fail(store, c.id, c.attempt, UNAVAILABLE)
        outcomes.append((c.attempt, c.retries, r.status))
        if r.status is TaskStatus.DEAD:
            break
    assert outcomes == [(1, 0, TaskStatus.FAILED), (2, 1, TaskStatus.FAILED), (3, 2, TaskStatus.DEAD)]
    t = store.get(1)
    assert (t.status, t.retries, t.max_retries, t.retry_at) == (TaskStatus.DEAD, 2, 2, None)
    assert t.failure_reason == "download: 503 Service Unavailable (retries exhausted 2 of 2)"
    assert t.completed_at is not None
    assert [a.outcome for a in t.attempts] == ["failed", "failed", "dead"]
    assert t.attempts[-1].decision == "retries exhausted 2 of 2"
    assert store.outstanding() == 0


def test_permanent_error_is_dead_at_once(store):
    store.submit([new(1)])
    (c,) = store.claim(1, "o", lease_s=60)
    r = fail(store, c.id, c.attempt, NOT_FOUND, actor="a1", node="n1")
    assert (r.applied, r.status, r.retry_at) == (True, TaskStatus.DEAD, None)
    assert r.reason == "download: 404 Not Found for s3://bkt/a.wav (permanent error)"
    t = store.get(1)
    assert (t.retries, t.last_error) == (0, "InputMissing: 404 Not Found for s3://bkt/a.wav (HTTP 404)")
    assert [(a.outcome, a.http_status, a.actor, a.node) for a in t.attempts] == [("dead", 404, "a1", "n1")]


def test_record_batch_is_one_transaction_with_constant_round_trips(store):
    store.submit([new(i) for i in range(100)])
    claimed = store.claim(100, "o", lease_s=60)
    outcomes = []
    for i, c in enumerate(claimed):
        if i % 4 == 0:
            outcomes.append(Outcome(c.id, c.attempt, result=result(i), actor=f"actor-{i % 3}"))
        elif i % 4 == 1:
            outcomes.append(Outcome(c.id, c.attempt, failure=UNAVAILABLE))
        elif i % 4 == 2:
            outcomes.append(Outcome(c.id, c.attempt, failure=NOT_FOUND))
        else:
            outcomes.append(Outcome(c.id, c.attempt + 1, result=result(i)))  # stale/bogus attempt
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(store.db.engine, "before_cursor_execute", count)
    try:
        results = store.record(outcomes)
    finally:
        sa.event.remove(store.db.engine, "before_cursor_execute", count)
    assert len(statements) == 2  # lock all; update tasks and attempts
    assert [r.task_id for r in results] == [o.task_id for o in outcomes]
    assert [r.status for r in results] == [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DEAD, None] * 25
    assert [r.applied for r in results] == [True, True, True, False] * 25
    with store.db.engine.connect() as conn:
        # now() is the transaction's start time: one value means one transaction.
        stamps = conn.execute(sa.text(
            "SELECT count(DISTINCT updated_at) FROM tasks WHERE status <> 'in_progress'")).scalar_one()  # fmt: skip
        finished = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT finished_at) FROM task_attempts WHERE finished_at IS NOT NULL")).one()  # fmt: skip
    assert stamps == 1
    assert tuple(finished) == (75, 1)
    s = store.stats()
    assert [s.counts[x] for x in TaskStatus] == [0, 25, 25, 25, 25, 0]


def test_duplicate_outcomes_in_one_batch_apply_once(store):
    store.submit([new(1)])
    (c,) = store.claim(1, "o", lease_s=60)
    results = store.record([Outcome(c.id, c.attempt, result=result()), Outcome(c.id, c.attempt, failure=UNAVAILABLE)])
    assert [(r.applied, r.status) for r in results] == [(True, TaskStatus.COMPLETED), (False, None)]
    assert store.get(1).status is TaskStatus.COMPLETED


# --- leases: reap, renew, release --------------------------------------------------------------


def test_reap_expired_leases_and_renew_keeps_others(store):
    store.submit([new(1), new(2), new(3)])
    claimed = {c.id: c for c in store.claim(3, "orch", lease_s=0.3)}
    time.sleep(0.15)
    lost = store.renew([(1, claimed[1].attempt), (3, claimed[3].attempt + 5), (2, claimed[2].attempt)], "orch", lease_s=60)
    assert lost == {(3, claimed[3].attempt + 5)}  # wrong attempt: not renewed
    assert store.renew([(1, 1)], "intruder", lease_s=60) == {(1, 1)}  # not the owner
    time.sleep(0.3)
    reaped = store.reap()
    assert [(r.task_id, r.applied, r.status, r.reason) for r in reaped] == [
        (3, True, TaskStatus.FAILED, "lease: lease expired")
    ]
    assert store.reap() == []
    t = store.get(3)
    assert (t.status, t.retries, t.failure_reason, t.last_error) == (
        TaskStatus.FAILED, 1, "lease: lease expired", "LeaseExpired: lease expired")  # fmt: skip
    assert attempts_of(store, 3) == [(1, "failed", "lease", "LeaseExpired")]
    assert store.get(1).status is TaskStatus.IN_PROGRESS
    # A lease that was reaped is lost for its holder.
    assert store.renew([(3, 1)], "orch", lease_s=60) == {(3, 1)}


def test_poison_task_that_kills_every_worker_ends_dead(store):
    store.submit([new(1, max_retries=1)])
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and store.get(1).status is not TaskStatus.DEAD:
        if store.claim(1, "o", lease_s=0.05):
            time.sleep(0.08)  # the worker "dies": nobody renews
        statuses += [r.status for r in store.reap()]
        time.sleep(0.02)
    assert statuses == [TaskStatus.FAILED, TaskStatus.DEAD]
    t = store.get(1)
    assert t.failure_reason == "lease: lease expired (retries exhausted 1 of 1)"
    assert [a.outcome for a in t.attempts] == ["failed", "dead"]


def test_release_returns_tasks_without_charging_a_retry(store):
    store.submit([new(1), new(2)])
    claimed = store.claim(2, "stopping", lease_s=60)
    leases = [(c.id, c.attempt) for c in claimed]
    assert store.release(leases, "someone-else") == 0
    assert store.release(leases + [(1, 99)], "stopping") == 2
    t = store.get(1)
    assert (t.status, t.retries, t.attempt, t.lease_owner) == (TaskStatus.PENDING, 0, 1, None)
    assert [(a.outcome, a.stage) for a in t.attempts] == [("released", "shutdown")]
    again = store.claim(2, "next", lease_s=60)
    assert sorted((c.id, c.attempt, c.retries) for c in again) == [(1, 2, 0), (2, 2, 0)]


def test_a_task_handed_back_by_a_dead_actor_is_not_charged(store):
    store.submit([new(1)])
    (c,) = store.claim(1, "o", lease_s=60)
    cause = "actor worker-3 died (its process died) while the task was download: not its doing, not charged"
    (r,) = store.record([Outcome(1, c.attempt, release=Release(Stage.WORKER_DEATH, cause), actor="worker-3")])
    assert (r.applied, r.status, r.retry_at) == (True, TaskStatus.PENDING, None)
    t = store.get(1)
    assert (t.status, t.retries, t.crashes, t.releases, t.lease_owner) == (TaskStatus.PENDING, 0, 0, 1, None)
    (a,) = t.attempts
    assert (a.outcome, a.stage, a.error_class, a.actor) == ("released", "worker-death", None, "worker-3")
    assert a.error_message == cause and a.decision == f"released: {cause}"
    # Pending at once: the next claim takes it, and carries what it went through.
    (again,) = store.claim(1, "o", lease_s=60)
    assert (again.attempt, again.retries, again.crashes, again.releases) == (2, 0, 0, 1)
    # A late outcome of the released attempt is fenced out.
    assert not store.record([Outcome(1, c.attempt, result=result(1))])[0].applied


def test_crashes_are_counted_and_a_task_buried_by_them_says_how_many(store):
    store.submit([new(1, max_retries=1)])
    crash = Failure(Stage.WORKER_DEATH, "WorkerDied", "actor worker-1 died while computing the task", True)
    for expected in (TaskStatus.FAILED, TaskStatus.DEAD):
        deadline = time.monotonic() + 10
        while not (claimed := store.claim(1, "o", lease_s=60)):
            assert time.monotonic() < deadline, "the retry never became claimable"
            time.sleep(0.02)
        assert claimed[0].crashes == (0 if expected is TaskStatus.FAILED else 1)
        assert store.record([Outcome(1, claimed[0].attempt, failure=crash)])[0].status is expected
    t = store.get(1)
    assert (t.crashes, t.retries, t.releases) == (2, 1, 0)
    assert t.failure_reason == (
        "worker-death: actor worker-1 died while computing the task (crashed the worker 2 times; retries exhausted 1 of 1)"
    )


# --- operator actions --------------------------------------------------------------------------


def test_requeue_dead_and_failed(store):
    store.submit([new(1), new(2), new(3), new(4)])
    c = {x.id: x for x in store.claim(4, "o", lease_s=60)}
    fail(store, 1, c[1].attempt, NOT_FOUND)
    fail(store, 2, c[2].attempt, UNAVAILABLE)
    complete(store, 3, c[3].attempt, result(3))
    with pytest.raises(InvalidInput, match="cannot requeue completed tasks"):
        store.requeue(status=TaskStatus.COMPLETED)
    with pytest.raises(InvalidInput, match="requeue needs task ids or a status"):
        store.requeue()
    assert store.requeue([3, 4]).count == 0  # completed and in_progress are not requeued
    assert store.requeue(status=TaskStatus.DEAD).count == 1
    t = store.get(1)
    assert (t.status, t.retries, t.completed_at, t.failure_reason) == (
        TaskStatus.PENDING, 0, None, "download: 404 Not Found for s3://bkt/a.wav (permanent error)")  # fmt: skip
    assert [a.outcome for a in t.attempts] == ["dead"]  # history kept
    assert store.requeue([2]).count == 1
    assert (store.get(2).status, store.get(2).retries, store.get(2).retry_at) == (TaskStatus.PENDING, 0, None)
    again = sorted((x.id, x.attempt) for x in store.claim(5, "o", lease_s=60))
    assert again == [(1, 2), (2, 2)]


def test_cancel_non_terminal_tasks_and_fence_the_worker(store):
    store.submit([new(i) for i in range(1, 6)])
    c = {x.id: x for x in store.claim(3, "o", lease_s=60)}  # 1, 2, 3 in progress; 4, 5 pending
    fail(store, 2, c[2].attempt, UNAVAILABLE)  # failed, waiting for retry
    complete(store, 3, c[3].attempt, result(3))
    assert store.cancel([1, 2, 3, 4, 999]).count == 3
    assert [store.get(i).status for i in range(1, 6)] == [
        TaskStatus.CANCELLED, TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.PENDING
    ]
    assert attempts_of(store, 1) == [(1, "cancelled", None, None)]
    late = complete(store, 1, c[1].attempt, result(1))
    assert (late.applied, late.reason) == (False, "fenced: task is cancelled at attempt 1")
    assert store.requeue(status=TaskStatus.CANCELLED).count == 3
    assert store.outstanding() == 4


def test_requeue_and_cancel_report_which_ids_they_left_alone_and_why(store):
    """The operator is told which named tasks were in a status that does not allow it, and which are no task."""
    from raytranscribe.store import StatusChange

    store.submit([new(i) for i in range(1, 5)])
    c = {x.id: x for x in store.claim(2, "o", lease_s=60)}  # 1, 2 in progress; 3, 4 pending
    complete(store, 1, c[1].attempt, result(1))
    assert store.cancel([4, 1, 2, 999, 4, 2**64]) == StatusChange(
        changed=(2, 4), refused=((1, TaskStatus.COMPLETED),), missing=(999, 2**64)
    )
    assert store.requeue([1, 2, 3, 0]) == StatusChange(
        changed=(2,), refused=((1, TaskStatus.COMPLETED), (3, TaskStatus.PENDING)), missing=(0,)
    )
    # Only ids out of range, with a status: nothing named exists, so nothing changes (not "every dead task").
    assert store.requeue([2**63], status=TaskStatus.CANCELLED) == StatusChange((), (), (2**63,))
    assert store.get(4).status is TaskStatus.CANCELLED
    assert store.requeue(status=TaskStatus.CANCELLED) == StatusChange(changed=(4,))


# --- reading -----------------------------------------------------------------------------------


def test_stats_list_and_outstanding(store):
    store.submit([new(i) for i in range(1, 7)])
    c = {x.id: x for x in store.claim(5, "o", lease_s=60)}
    complete(store, 1, c[1].attempt, result(1))
    complete(store, 2, c[2].attempt, TaskResult(7.5, "en", (), ""))
    fail(store, 3, c[3].attempt, NOT_FOUND)
    fail(store, 4, c[4].attempt, UNAVAILABLE)
    time.sleep(0.05)
    s = store.stats()
    assert s.counts == {
        TaskStatus.PENDING: 1, TaskStatus.IN_PROGRESS: 1, TaskStatus.COMPLETED: 2,
        TaskStatus.FAILED: 1, TaskStatus.DEAD: 1, TaskStatus.CANCELLED: 0,
    }  # fmt: skip
    assert s.total == 6
    assert s.oldest_pending_age_s is not None and 0.05 <= s.oldest_pending_age_s < 30
    assert s.retries_scheduled == 1
    assert s.top_failure_reasons == (
        ("download: 404 Not Found for s3://bkt/a.wav (permanent error)", 1),
        ("download: 503 Service Unavailable", 1),
    )
    assert s.audio_seconds_completed == 20.0
    assert s.to_dict()["counts"]["completed"] == 2
    assert [t.id for t in store.list_tasks(status=TaskStatus.COMPLETED)] == [1, 2]
    assert [t.id for t in store.list_tasks(limit=3)] == [1, 2, 3]
    assert store.list_tasks(status=TaskStatus.CANCELLED) == []
    assert store.outstanding() == 3
    assert store.get(12345) is None
    d = store.get(1).to_dict()
    assert (d["status"], d["output_uris"], d["attempts"][0]["outcome"]) == (
        "completed", ["s3://bkt/out/00001.json", "s3://bkt/out/00001.txt"], "completed")  # fmt: skip


def test_empty_stats(store):
    s = store.stats()
    assert (s.total, s.oldest_pending_age_s, s.retries_scheduled, s.top_failure_reasons, s.audio_seconds_completed) == (
        0, None, 0, (), 0.0)  # fmt: skip
    assert set(s.counts) == set(TaskStatus)


def test_outstanding_and_status_counts_by_pool(store):
    from raytranscribe.store import NewTask

    report = store.submit([
        NewTask("s3://bkt/in/a.wav", "s3://bkt/out/a"),
        NewTask("s3://bkt/in/b.wav", "s3://bkt/out/b", model="large-v3"),
        NewTask("s3://bkt/in/c.wav", "s3://bkt/out/c", model="large-v3"),
    ])
    assert store.outstanding() == 3
    assert store.outstanding(pairs=[("faster-whisper", "tiny.en")]) == 1
    assert store.outstanding(pairs=[("faster-whisper", "large-v3"), ("openai-whisper", "x")]) == 2
    store.cancel([report.inserted[1]])
    counts = store.count_by_status(report.inserted)
    assert counts[TaskStatus.PENDING] == 2 and counts[TaskStatus.CANCELLED] == 1 and counts[TaskStatus.DEAD] == 0
