"""Store.result_pages: the keyset walk `raytranscribe export` reads, against a real PostgreSQL."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.errors import Failure, InvalidInput, Stage
from raytranscribe.store import NewTask, ResultRow, Store, TaskStatus

NOT_FOUND = Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found", transient=False, http_status=404)


def settle(store: Store, n: int, *, dead: set[int] = frozenset(), pending: set[int] = frozenset()) -> None:
    """Tasks 1..n: completed through the store as a run records them, but ``dead`` (a permanent
    failure) and ``pending`` (never claimed)."""
    store.submit([NewTask(f"s3://bkt/in/{i:04d}.wav", f"s3://bkt/out/{i:04d}",
                          options=TranscribeOptions(language="en" if i % 2 else None)) for i in range(1, n + 1)])  # fmt: skip
    claimed = store.claim(n - len(pending), "orch-test", lease_s=60, pairs=None)
    claimed = [c for c in claimed if c.id not in pending] if pending else claimed
    outcomes = [
        Outcome(c.id, c.attempt, failure=NOT_FOUND) if c.id in dead
        else Outcome(c.id, c.attempt, result=TaskResult(float(c.id), "en", (f"s3://bkt/out/{c.id:04d}.txt",), "hi"))
        for c in claimed
    ]  # fmt: skip
    store.record(outcomes)


def judge(store: Store, verdicts: dict[int, bool]) -> None:
    """What the quality measures write on completion (migration 0009), set here directly."""
    with store.db.engine.begin() as conn:
        for task_id, suspect in verdicts.items():
            quality = {"avg_logprob": -0.3, "reasons": ["repetition loop"] if suspect else []}
            conn.execute(sa.text("UPDATE tasks SET quality = CAST(:q AS jsonb), suspect = :s WHERE id = :id"),
                         {"q": json.dumps(quality), "s": suspect, "id": task_id})  # fmt: skip


def test_pages_give_every_task_once_in_id_order(store):
    settle(store, 23, dead={5, 17})  # 21 completed: three pages of 7, then an empty read
    pages = list(store.result_pages(page_size=7))
    assert [len(p) for p in pages] == [7, 7, 7]
    ids = [r.id for p in pages for r in p]
    assert ids == [i for i in range(1, 24) if i not in (5, 17)]
    assert {type(r) for p in pages for r in p} == {ResultRow}
    # A page size that does not divide the count: the short last page ends the walk.
    assert [len(p) for p in store.result_pages(page_size=8)] == [8, 8, 5]
    assert [r.id for p in store.result_pages(page_size=100) for r in p] == ids


def test_a_row_is_what_the_task_row_holds(store):
    settle(store, 3, dead={2})
    judge(store, {1: True})
    rows = {r.id: r for p in store.result_pages((TaskStatus.COMPLETED, TaskStatus.DEAD)) for r in p}
    assert sorted(rows) == [1, 2, 3]
    one, two, three = rows[1], rows[2], rows[3]
    assert (one.status, one.input_uri, one.output_uri, one.output_uris) == (
        TaskStatus.COMPLETED, "s3://bkt/in/0001.wav", "s3://bkt/out/0001", ("s3://bkt/out/0001.txt",))  # fmt: skip
    assert (one.engine, one.model, one.language, one.audio_duration_s, one.text_preview) == (
        "faster-whisper", "tiny.en", "en", 1.0, "hi")  # fmt: skip
    assert json.loads(one.options) == store.get(1).options.to_dict()
    assert (json.loads(one.quality), one.suspect) == ({"avg_logprob": -0.3, "reasons": ["repetition loop"]}, True)
    assert (three.quality, three.suspect) == (None, None)  # not measured
    assert (one.attempt, one.retries, one.failure_reason) == (1, 0, None)
    assert one.created_at == store.get(1).created_at and one.completed_at == store.get(1).completed_at
    assert (two.status, two.output_uris, two.failure_reason) == (TaskStatus.DEAD, (), store.get(2).failure_reason)
    assert two.failure_reason and "404" in two.failure_reason


def test_statuses_and_the_verdict_filter(store):
    settle(store, 10, dead={3}, pending={9, 10})
    judge(store, {1: False, 2: True, 6: True})
    ids = lambda **kw: [r.id for p in store.result_pages(**kw) for r in p]  # noqa: E731
    assert ids() == [1, 2, 4, 5, 6, 7, 8]  # completed, the default
    assert ids(statuses=(TaskStatus.DEAD, TaskStatus.PENDING)) == [3, 9, 10]
    assert ids(suspect=True, page_size=1) == [2, 6]
    assert ids(suspect=False) == [1]  # judged sound; unmeasured tasks are neither
    assert ids(statuses=(TaskStatus.CANCELLED,)) == []
    with pytest.raises(InvalidInput, match="page_size must be at least 1, got 0"):
        store.result_pages(page_size=0)
    with pytest.raises(InvalidInput, match="give at least one status"):
        store.result_pages(())
