"""What recording outcomes will write, decided without a database (store/plan.py is pure)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from raytranscribe.contracts import Outcome, Release, TaskResult
from raytranscribe.errors import Failure, Stage
from raytranscribe.retry import RetryPolicy
from raytranscribe.store.plan import NO_SUCH_TASK, SUPERSEDED, Refusal, Row, Write, plan
from raytranscribe.store.states import AttemptOutcome, TaskStatus

POLICY = RetryPolicy(max_retries=3, base_delay_s=10.0, backoff_factor=2.0, max_delay_s=300.0)
UNAVAILABLE = Failure(Stage.DOWNLOAD, "ServerError", "503 Service Unavailable", transient=True, http_status=503)
MISSING = Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found", transient=False, http_status=404)
CRASH = Failure(Stage.WORKER_DEATH, "WorkerDied", "actor worker-1 died while computing the task", True)
RESULT = TaskResult(12.5, "en", ("s3://bkt/out/1.json",), "hello")


def row(task_id=1, *, status=TaskStatus.IN_PROGRESS, attempt=1, retries=0, max_retries=3, crashes=0, releases=0):
    return Row(task_id, status, attempt, retries, max_retries, 2.0, crashes, releases)


def one(outcome: Outcome, r: Row, policy: RetryPolicy = POLICY) -> Write | Refusal:
    (planned,) = plan([outcome], {r.id: r}, policy)
    return planned


def test_a_completion_writes_completed_and_keeps_the_counters():
    w = one(Outcome(1, 1, result=RESULT), row(retries=2, crashes=1, releases=3))
    assert isinstance(w, Write)
    assert (w.status, w.retries, w.delay_s, w.reason, w.error, w.crashes, w.releases) == (
        TaskStatus.COMPLETED, 2, None, None, None, 1, 3)  # fmt: skip
    assert (w.attempt_outcome, w.decision) == (AttemptOutcome.COMPLETED, None)


def test_a_permanent_error_buries_the_task_at_once():
    w = one(Outcome(1, 1, failure=MISSING), row())
    assert (w.status, w.retries, w.delay_s, w.attempt_outcome) == (TaskStatus.DEAD, 0, None, AttemptOutcome.DEAD)
    assert w.reason == "download: 404 Not Found (permanent error)"
    assert w.error == "InputMissing: 404 Not Found (HTTP 404)"
    assert w.decision == "permanent error"


def test_a_transient_error_schedules_a_retry_within_the_jitter_bounds():
    delays = []
    for retries in (0, 2):
        for _ in range(50):
            w = one(Outcome(1, 1, failure=UNAVAILABLE), row(retries=retries))
            assert (w.status, w.retries, w.reason) == (
                TaskStatus.FAILED,
                retries + 1,
                "download: 503 Service Unavailable",
            )
            assert (w.attempt_outcome, w.decision) == (
                AttemptOutcome.FAILED,
                f"transient error, retry {retries + 1} of 3",
            )
            assert 0 <= w.delay_s <= 10.0 * 2.0**retries  # full jitter under the ceiling
            delays.append(w.delay_s)
    assert len({round(d, 3) for d in delays}) > 5  # not one fixed delay
    # The dice come in through rand: pinned, the delay is the ceiling.
    (pinned,) = plan([Outcome(1, 1, failure=UNAVAILABLE)], {1: row(retries=2)}, POLICY, rand=lambda: 1.0)
    assert pinned.delay_s == 40.0


def test_retries_exhausted_bury_a_transient_error_with_the_policy_of_the_row():
    w = one(Outcome(1, 1, failure=UNAVAILABLE), row(retries=1, max_retries=1))
    assert (w.status, w.retries) == (TaskStatus.DEAD, 1)
    assert w.reason == "download: 503 Service Unavailable (retries exhausted 1 of 1)"


def test_a_release_is_pending_again_uncharged_with_one_more_release():
    release = Release(Stage.WORKER_DEATH, "actor worker-1 died while the task waited")
    w = one(Outcome(1, 1, release=release), row(retries=1, crashes=1, releases=2))
    assert (w.status, w.retries, w.delay_s, w.reason, w.crashes, w.releases) == (
        TaskStatus.PENDING, 1, None, None, 1, 3)  # fmt: skip
    assert (w.attempt_outcome, w.decision) == (AttemptOutcome.RELEASED, f"released: {release.cause}")


def test_worker_deaths_count_crashes_and_a_task_buried_by_them_says_how_many():
    first = one(Outcome(1, 1, failure=CRASH), row(max_retries=1))
    assert (first.status, first.crashes, first.retries) == (TaskStatus.FAILED, 1, 1)
    second = one(Outcome(1, 2, failure=CRASH), row(attempt=2, retries=1, max_retries=1, crashes=1))
    assert (second.status, second.crashes) == (TaskStatus.DEAD, 2)
    assert second.reason == (
        "worker-death: actor worker-1 died while computing the task (crashed the worker 2 times; retries exhausted 1 of 1)"
    )
    # Another stage's failure is no crash.
    assert one(Outcome(1, 1, failure=UNAVAILABLE), row(crashes=1)).crashes == 1


@pytest.mark.parametrize(
    ("r", "why"),
    [
        (row(attempt=2), "fenced: task is in_progress at attempt 2"),
        (row(status=TaskStatus.CANCELLED), "fenced: task is cancelled at attempt 1"),
        (row(status=TaskStatus.PENDING, attempt=1), "fenced: task is pending at attempt 1"),
    ],
)
def test_an_outcome_of_another_attempt_or_status_is_fenced_out(r, why):
    assert one(Outcome(1, 1, failure=UNAVAILABLE), r) == Refusal(Outcome(1, 1, failure=UNAVAILABLE), why)


def test_a_missing_task_and_a_second_outcome_for_one_task_change_nothing():
    first, second, ghost = Outcome(1, 1, result=RESULT), Outcome(1, 1, failure=MISSING), Outcome(9, 1, result=RESULT)
    planned = plan([first, second, ghost], {1: row()}, POLICY)
    assert [type(p) for p in planned] == [Write, Refusal, Refusal]
    assert (planned[1].reason, planned[2].reason) == (SUPERSEDED, NO_SUCH_TASK)
    assert [p.outcome for p in planned] == [first, second, ghost]  # in the order of the outcomes


def test_the_plan_imports_no_sql():
    source = Path(__file__).resolve().parents[2] / "raytranscribe" / "store" / "plan.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not {m for m in imported if m.split(".")[0] in ("sqlalchemy", "psycopg2", "alembic")}, imported
    assert {m for m in imported if m.startswith("raytranscribe.store")} == {"raytranscribe.store.states"}
