"""raytranscribe.Client against the real test database (and, once, a real run: Ray, moto, tiny.en)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

import raytranscribe
from raytranscribe import BackfillResult, Client, Status, SubmitResult
from raytranscribe.contracts import TaskResult
from raytranscribe.errors import Failure, InvalidInput, ManifestError, Stage, TaskNotFound
from raytranscribe.store import NewTask, StatusChange, StoreStats, TaskStatus, TaskView
from tests.support.db import complete, fail


def _populate(store) -> None:
    """Tasks 1 completed, 2 dead, 3 in_progress, 4 pending."""
    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in range(1, 5)])
    claimed = {c.id: c for c in store.claim(3, "orch-test", lease_s=60)}
    complete(store, 1, claimed[1].attempt, TaskResult(30.0, "en", ("s3://bkt/out/1.json",), "hi"), actor="actor-7")
    fail(store, 2, claimed[2].attempt, Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found", False, 404))


def test_import_raytranscribe_stays_cheap_and_client_loads_on_first_use():
    code = (
        "import sys, raytranscribe; heavy = ('sqlalchemy', 'pydantic', 'ray', 'boto3', 'raytranscribe.client'); "
        "print(','.join(m for m in heavy if m in sys.modules)); "
        "from raytranscribe import Client; import raytranscribe.client as c; print(Client is c.Client)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["", "True"]
    assert "Client" in dir(raytranscribe) and raytranscribe.Client is Client
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        raytranscribe.Nope  # noqa: B018


def test_submit_status_tasks_show(store, database_url, tmp_path):
    notes: list[str] = []
    with Client(database_url) as rt:
        first = rt.submit(["s3://bkt/in/talk.mp3", "s3://bkt/in/sub/b.wav"], "s3://out-bkt/run1/", language="en",
                          formats=["srt", "txt"], priority=4, max_retries=5, model="base", notes=notes.append)  # fmt: skip
        assert first == SubmitResult(inserted=(1, 2), duplicates=0, duplicate_inputs=(), skipped=0, read=2)
        again = rt.submit(["s3://bkt/in/talk.mp3"], "s3://out-bkt/run1", language="en", formats="srt,txt", model="base")
        assert (again.inserted, again.duplicates, again.duplicate_inputs) == ((), 1, ("s3://bkt/in/talk.mp3",))
        assert notes == []  # object URIs: nothing listed, nothing to note

        manifest = tmp_path / "tasks.jsonl"
        manifest.write_text(json.dumps({"input_uri": "s3://bkt/in/c.flac", "output_uri": "s3://bkt/out/c"}) + "\n")
        assert rt.submit_manifest(manifest, engine="openai-whisper").inserted == (3,)
        manifest.write_text('{"input_uri": "s3://bkt/in/d.flac"}\n')
        with pytest.raises(ManifestError, match=r"line 1: missing required field\(s\) \['output_uri'\]"):
            rt.submit_manifest(manifest)

        now = rt.status()
        assert isinstance(now, Status) and isinstance(now.stats, StoreStats)
        assert (now.stats.counts[TaskStatus.PENDING], now.stats.total, now.orchestrators) == (3, 3, ())
        assert now.to_dict()["counts"]["pending"] == 3

        listed = rt.tasks()
        assert [type(t) for t in listed] == [TaskView] * 3
        a = listed[0]
        assert (a.output_uri, a.options.language, a.options.formats, a.priority, a.max_retries, a.model) == (
            "s3://out-bkt/run1/talk", "en", ("srt", "txt"), 4, 5, "base")  # fmt: skip
        assert [t.engine for t in rt.tasks("pending", limit=5)][-1] == "openai-whisper"
        assert rt.tasks(TaskStatus.DEAD) == [] and len(rt.tasks(limit=1)) == 1
        with pytest.raises(InvalidInput, match="unknown status 'exploded'; choose from pending, in_progress"):
            rt.tasks("exploded")

        assert rt.show(2).input_uri == "s3://bkt/in/sub/b.wav"
        with pytest.raises(TaskNotFound, match="task 99 not found"):
            rt.show(99)


def test_show_has_the_attempts_and_retry_and_cancel_report_what_they_changed(store, database_url):
    _populate(store)
    with Client(database_url) as rt:
        done = rt.show(1)
        assert (done.status, done.audio_duration_s, done.text_preview) == (TaskStatus.COMPLETED, 30.0, "hi")
        assert [(x.attempt, x.outcome, x.actor) for x in done.attempts] == [(1, "completed", "actor-7")]

        refused = rt.retry([1, 3, 99])
        assert refused == StatusChange(changed=(), refused=((1, TaskStatus.COMPLETED), (3, TaskStatus.IN_PROGRESS)),
                                       missing=(99,))  # fmt: skip
        assert rt.retry(status="dead") == StatusChange(changed=(2,))
        assert rt.show(2).status is TaskStatus.PENDING and len(rt.show(2).attempts) == 1
        with pytest.raises(InvalidInput, match="cannot requeue completed tasks"):
            rt.retry(status=TaskStatus.COMPLETED)
        with pytest.raises(InvalidInput, match="give task ids or a status"):
            rt.retry()

        cancelled = rt.cancel([1, 3, 4, 77])
        assert cancelled == StatusChange(changed=(3, 4), refused=((1, TaskStatus.COMPLETED),), missing=(77,))
        assert [rt.show(i).status for i in (3, 4)] == [TaskStatus.CANCELLED] * 2
        assert rt.retry([3]).changed == (3,)


def _connections(url: str) -> int:
    """This process's open connections to the database's server (other processes' come and go)."""
    import psutil

    port = sa.engine.make_url(url).port or 5432
    return sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port
               and c.status == psutil.CONN_ESTABLISHED)  # fmt: skip


def test_a_client_connects_on_first_use_and_its_with_block_closes_the_store(store, database_url):
    before = _connections(database_url)
    with Client(database_url) as rt:
        assert repr(rt) == "Client(not connected)" and _connections(database_url) == before
        rt.status()
        assert _connections(database_url) > before
    assert _connections(database_url) == before


def test_the_url_given_wins_and_a_bad_one_is_one_config_error(store, database_url, monkeypatch):
    from raytranscribe.errors import ConfigError

    monkeypatch.setenv("RAYTRANSCRIBE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    with Client(database_url) as rt:
        assert rt.status().stats.total == 0
    with pytest.raises(ConfigError, match="database URL 'mysql://x/y' is not PostgreSQL"):
        Client("mysql://x/y").status()
    with pytest.raises(InvalidInput, match="engine and model go together"):
        Client(database_url).run(engine="faster-whisper")


@pytest.mark.timeout(300)
def test_backfill_submits_a_prefix_runs_it_and_counts_its_own_tasks(system, tmp_path):
    """One short end-to-end run through the Client: a real Ray, moto over HTTP, tiny.en on the CPU."""
    from tests.support.speech import wer

    ((uri, sentence),) = system.upload_samples(["fox.wav"], prefix="calls/")
    system.put("calls/notes.txt", b"not audio")
    # A task elsewhere in the queue that dies in this run is not this backfill's.
    (old,) = system.submit([system.put("elsewhere/x.wav", b"not audio either")], max_retries=0)
    notes: list[str] = []
    submitted: list[SubmitResult] = []
    settings = system.settings.with_(worker={"min_actors": 1, "max_actors": 1})
    with Client(settings=settings) as rt:
        result = rt.backfill(f"s3://{system.bucket}/calls/", f"s3://{system.bucket}/out/", actors=1,
                             gpus_per_actor=0, notes=notes.append, on_submitted=submitted.append)  # fmt: skip
        assert isinstance(result, BackfillResult)
        (task_id,) = result.submitted.inserted
        assert submitted == [result.submitted]
        assert f"s3://{system.bucket}/calls/: 1 audio object(s), 0 already submitted" in notes
        assert (result.dead, result.waiting, result.counts[TaskStatus.COMPLETED]) == (0, 0, 1)
        assert (result.run.completed, result.run.dead, result.run.stopped) == (1, 1, False)
        assert rt.show(old).status is TaskStatus.DEAD
        doc = json.loads(json.dumps(result.to_dict()))
        assert (doc["submitted"], doc["counts"]["completed"], doc["run"]["completed"]) == (1, 1, 1)
        task = rt.show(task_id)
        assert (task.status, task.input_uri) == (TaskStatus.COMPLETED, uri)
        assert wer(sentence, system.object_text(f"s3://{system.bucket}/out/fox.txt")) <= 0.25
        # The index of the results holds the finished task as `show` has it (tests/test_export.py: the rest).
        import pyarrow.parquet as pq

        index = rt.export(str(tmp_path / "index.parquet"))
        rows = {row["id"]: row for row in pq.read_table(tmp_path / "index.parquet").to_pylist()}
        assert index.rows == len(rows) and old not in rows
        row = rows[task_id]
        assert (row["input_uri"], tuple(row["output_uris"]), row["language"], row["audio_duration_s"], row["engine"],
                row["model"], json.loads(row["options"])) == (task.input_uri, task.output_uris, task.language,
                task.audio_duration_s, task.engine, task.model, task.options.to_dict())  # fmt: skip
        # Again: everything under the prefix is submitted already, nothing runs.
        again = rt.backfill(f"s3://{system.bucket}/calls/", f"s3://{system.bucket}/out/", gpus_per_actor=0,
                            notes=notes.append)  # fmt: skip
        assert (again.submitted.inserted, again.run.completed, again.dead) == ((), 0, 0)
    system.check_invariants()


def test_tasks_suspect_and_retry_suspect_through_the_client(store, database_url):
    from raytranscribe.engines.verdict import Reason, TranscriptQuality

    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in (1, 2)])
    claimed = {c.id: c for c in store.claim(2, "orch-test", lease_s=60)}
    for i, suspect in ((1, False), (2, True)):
        q = TranscriptQuality(-1.5 if suspect else -0.2, 0.1, 1.2, 1, int(suspect), None, 5.0, 9, 1.8, suspect,
                              (Reason.LOW_CONFIDENCE,) if suspect else ())  # fmt: skip
        complete(store, i, claimed[i].attempt, TaskResult(5.0, "en", (f"s3://bkt/out/{i}.json",), "hi", quality=q))
    with Client(database_url) as rt:
        assert rt.status().suspects == 1 and rt.status().to_dict()["suspects"] == 1
        assert [t.id for t in rt.tasks(suspect=True)] == [2]
        assert rt.tasks(suspect=True)[0].quality["reasons"] == ["low-confidence"]
        with pytest.raises(InvalidInput, match="give no task ids or --status with it"):
            rt.retry([2], suspect=True)
        with pytest.raises(InvalidInput, match="--model goes with --suspect"):
            rt.retry([2], model="base")
        assert rt.retry(suspect=True, model="base") == StatusChange((2,))
        assert rt.show(2).model == "base" and rt.show(2).status is TaskStatus.PENDING
        assert rt.show(1).status is TaskStatus.COMPLETED and rt.tasks(suspect=True) == []
