"""Suspect transcripts in the store (migration 0010): recorded on completion, counted and listed from
their side table, re-queued (completed -> pending, only for a suspect) with another model, history kept."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.engines.verdict import Reason, TranscriptQuality
from raytranscribe.errors import Failure, IllegalTransition, Stage
from raytranscribe.store import NewTask, Store, TaskStatus
from tests.support.db import complete, side_table_violations

SUSPECTS_DISAGREE = """
(SELECT 'missing', id FROM tasks WHERE suspect AND status = 'completed'
 EXCEPT SELECT 'missing', task_id FROM task_suspects)
UNION ALL
(SELECT 'stray', task_id FROM task_suspects
 EXCEPT SELECT 'stray', id FROM tasks WHERE suspect AND status = 'completed')
"""


def quality(suspect: bool) -> TranscriptQuality:
    return TranscriptQuality(
        mean_logprob=-1.4 if suspect else -0.3, max_no_speech_prob=0.2, max_compression_ratio=1.1, windows=2,
        fallback_windows=2 if suspect else 0, speech_s=None, audio_s=11.0, words=26, words_per_s=2.4,
        suspect=suspect, reasons=(Reason.LOW_CONFIDENCE,) if suspect else (),
    )  # fmt: skip


def result(i: int, suspect: bool | None) -> TaskResult:
    q = None if suspect is None else quality(suspect)
    return TaskResult(11.0, "en", (f"s3://bkt/out/{i}.json",), "text", quality=q)


def disagreements(store: Store) -> list[tuple]:
    with store.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(SUSPECTS_DISAGREE))]


def run_all(store: Store, verdicts: dict[int, bool | None]) -> None:
    """Claim every task and complete each with its verdict (in one batch, the hot path's statement)."""
    claimed = {c.id: c for c in store.claim(len(verdicts), "orch", lease_s=60)}
    outcomes = [Outcome(i, claimed[i].attempt, result=result(i, v)) for i, v in verdicts.items()]
    assert all(r.applied for r in store.record(outcomes))


def test_completion_records_the_verdict_and_status_counts_and_lists_suspects(store):
    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in (1, 2, 3)])
    run_all(store, {1: False, 2: True, 3: None})
    assert [(t.id, t.suspect) for t in store.list_tasks()] == [(1, False), (2, True), (3, None)]
    two = store.get(2)
    assert two.quality["suspect"] is True and two.quality["reasons"] == ["low-confidence"]
    assert two.quality["fallback_windows"] == 2 and two.quality["mean_logprob"] == -1.4
    assert two.attempts[-1].quality == two.quality  # the attempt keeps its own verdict
    assert store.suspects() == 1
    assert [t.id for t in store.list_tasks(suspect=True)] == [2]
    assert [t.id for t in store.list_tasks(suspect=True, status=TaskStatus.COMPLETED)] == [2]
    assert store.list_tasks(suspect=True, status=TaskStatus.PENDING) == []
    assert disagreements(store) == []


def test_a_suspect_completed_through_the_apply_path_too(store):
    """A batch with a failure goes through lock-plan-apply, not the completions' statement."""
    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in (1, 2)])
    claimed = {c.id: c for c in store.claim(2, "orch", lease_s=60)}
    failure = Failure(Stage.DOWNLOAD, "ServerError", "503", transient=True, http_status=503)
    store.record([Outcome(1, claimed[1].attempt, result=result(1, True)),
                  Outcome(2, claimed[2].attempt, failure=failure)])  # fmt: skip
    assert store.get(1).suspect is True and store.get(1).attempts[-1].quality["suspect"] is True
    assert store.get(2).suspect is None and store.get(2).status is TaskStatus.FAILED
    assert [t.id for t in store.list_tasks(suspect=True)] == [1]


def test_requeue_suspects_with_a_bigger_model_keeps_history_and_rejudges(store):
    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in (1, 2)])
    run_all(store, {1: False, 2: True})
    report = store.requeue_suspects(model="base")
    assert report.changed == (2,)
    two = store.get(2)
    assert (two.status, two.model, two.retries, two.quality, two.suspect) == (TaskStatus.PENDING, "base", 0, None, None)
    assert two.output_uri == "s3://bkt/out/2"  # the same outputs are written again
    assert store.get(1).status is TaskStatus.COMPLETED and store.get(1).model == "tiny.en"
    assert store.suspects() == 0 and store.list_tasks(suspect=True) == []
    assert side_table_violations(store) == [] and disagreements(store) == []
    # The queue serves the new model's pool; the re-run is judged afresh.
    assert store.claimable_pairs() == [("faster-whisper", "base")]
    (again,) = store.claim(5, "orch", lease_s=60)
    assert (again.id, again.model, again.attempt) == (2, "base", 2)
    assert complete(store, 2, 2, result(2, False)).applied
    two = store.get(2)
    assert two.suspect is False and [a.quality["suspect"] for a in two.attempts] == [True, False]
    assert store.requeue_suspects().changed == ()  # nothing suspect is left


def test_the_database_refuses_to_requeue_a_completed_task_that_is_not_suspect(store):
    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in (1, 2)])
    run_all(store, {1: False, 2: True})
    sql = sa.text("UPDATE tasks SET status = 'pending' WHERE id = :id")
    with pytest.raises(IllegalTransition, match=r"illegal task status transition completed -> pending"):
        store.db.run("raw", lambda conn: conn.execute(sql, {"id": 1}))
    store.db.run("raw", lambda conn: conn.execute(sql, {"id": 2}))  # suspect: allowed, even by hand
    assert store.get(2).status is TaskStatus.PENDING
    assert disagreements(store) == [] and store.suspects() == 0


def test_the_side_table_follows_ad_hoc_sql(store):
    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in (1, 2, 3)])
    run_all(store, {1: False, 2: True, 3: False})
    statements = [
        "UPDATE tasks SET suspect = true WHERE id = 3",
        "UPDATE tasks SET suspect = false WHERE id = 2",
        "UPDATE tasks SET suspect = NOT suspect",
        "DELETE FROM tasks WHERE id = 2",
        "INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key, status, "
        "suspect) VALUES ('s3://bkt/in/9.wav', 's3://bkt/out/9', 'faster-whisper', 'tiny.en', 1, 2, 'k9', "
        "'completed', true)",
    ]
    counts = []
    for statement in statements:
        store.db.run("raw", lambda conn, s=statement: conn.execute(sa.text(s)))
        assert disagreements(store) == [], statement
        counts.append(store.suspects())
    assert counts == [2, 1, 2, 1, 2]
    store.db.run("raw", lambda conn: conn.execute(sa.text("TRUNCATE tasks CASCADE")))
    assert store.suspects() == 0 and disagreements(store) == []
