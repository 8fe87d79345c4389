"""The real `raytranscribe` commands against the real test database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from raytranscribe.cli import app
from raytranscribe.contracts import TaskResult
from raytranscribe.errors import Failure, Stage
from raytranscribe.store import TaskStatus
from tests.store.test_schema import HEAD
from tests.support.db import create_database, drop_database


@pytest.fixture
def cli(store, database_url):
    """Run a command with RAYTRANSCRIBE_DATABASE_URL pointing at the (emptied) test database."""
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None):
        base = {"RAYTRANSCRIBE_DATABASE_URL": database_url, "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"}
        return runner.invoke(app, list(args), env={**base, **(env or {})})

    return run


def write_manifest(tmp_path: Path, *lines: str | dict) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


GOOD = {"input_uri": "s3://bkt/in/a.wav", "output_uri": "s3://bkt/out/a"}


# --- db ----------------------------------------------------------------------------------------


def test_db_upgrade_via_database_url_option(database_url):
    url = create_database(sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False), prefix="rt_cli")
    try:
        runner = CliRunner()
        # The root option wins over the environment variable (which points nowhere useful here).
        env = {"RAYTRANSCRIBE_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"}
        first = runner.invoke(app, ["--database-url", url, "db", "upgrade"], env=env)
        assert first.exit_code == 0, first.output
        assert f"database schema at revision {HEAD}" in first.stdout
        second = runner.invoke(app, ["--database-url", url, "db", "upgrade"], env=env)
        assert (second.exit_code, f"revision {HEAD}" in second.stdout) == (0, True)
    finally:
        drop_database(url)


def test_unreachable_database_exits_3():
    result = CliRunner().invoke(
        app, ["status"],
        env={"RAYTRANSCRIBE_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/x",
             "RAYTRANSCRIBE_STORE__OP_RETRIES": "0", "RAYTRANSCRIBE_LOG_LEVEL": "ERROR"},
    )  # fmt: skip
    assert result.exit_code == 3
    assert "error: store stats: database unavailable after 1 tries" in result.stderr


# --- submit ------------------------------------------------------------------------------------


def test_submit_uris_with_output_prefix(cli, store):
    result = cli("submit", "s3://bkt/in/talk.mp3", "s3://bkt/in/sub/interview.final.wav", "--output", "s3://out-bkt/run1/",
                 "--language", "en", "--formats", "srt,txt", "--priority", "4", "--max-retries", "5",
                 "--model", "base")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "submitted 2 task(s); 0 duplicate(s) skipped" in result.stdout
    a, b = store.list_tasks()
    assert (a.input_uri, a.output_uri) == ("s3://bkt/in/talk.mp3", "s3://out-bkt/run1/talk")
    assert b.output_uri == "s3://out-bkt/run1/interview.final"
    assert (a.options.language, a.options.formats, a.priority, a.max_retries, a.model, a.engine) == (
        "en", ("srt", "txt"), 4, 5, "base", "faster-whisper")  # fmt: skip
    again = cli("submit", "s3://bkt/in/talk.mp3", "--output", "s3://out-bkt/run1", "--language", "en",
                "--formats", "srt,txt", "--model", "base", "--json")  # fmt: skip
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {"inserted": [], "duplicates": ["s3://bkt/in/talk.mp3"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["s3://bkt/a.wav"], "--output PREFIX is required with input URIs"),
        ([], "give input URIs with --output, or --manifest FILE"),
        (["https://bkt/a.wav", "--output", "s3://out/x"], "must start with 's3://'"),
        (["s3://bkt/a.wav", "--output", "s3://Out/x"], "bucket name 'Out' may contain only lowercase"),
        (["s3://bkt/a.wav", "--output", "s3://out/x", "--engine", "whisperx"], "unknown engine 'whisperx'"),
        (["s3://bkt/a.wav", "--output", "s3://out/x", "--max-retries", "-2"], "max_retries must be an integer >= 0, got -2"),
        (["s3://bkt/a.wav", "--output", "s3://out/x", "--formats", "srt,docx"], "unknown output format(s) ['docx']"),
        (["s3://bkt/a/t.wav", "s3://bkt/b/t.mp3", "--output", "s3://out/x"], "would both write s3://out/x/t.*"),
    ],
)
def test_submit_rejects_bad_arguments(cli, store, args, message):
    result = cli("submit", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert store.stats().total == 0


def test_submit_manifest(cli, store, tmp_path):
    path = write_manifest(
        tmp_path,
        GOOD,
        "",  # blank lines are skipped
        {"input_uri": "s3://bkt/in/b.flac", "output_uri": "s3://bkt/out/b", "engine": "openai-whisper", "model": "base",
         "language": "de", "formats": ["json", "vtt"], "priority": 3, "max_retries": 0, "backoff_factor": 1.5},
    )  # fmt: skip
    result = cli("submit", "--manifest", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"inserted": [1, 2], "duplicates": []}
    b = store.get(2)
    assert (b.engine, b.model, b.options.language, b.options.formats, b.priority, b.max_retries, b.backoff_factor) == (
        "openai-whisper", "base", "de", ("json", "vtt"), 3, 0, 1.5)  # fmt: skip
    a = store.get(1)
    assert (a.engine, a.model, a.max_retries, a.backoff_factor, a.options.formats) == (
        "faster-whisper", "tiny.en", 3, 2.0, ("json", "srt", "vtt", "txt"))  # fmt: skip


BAD_LINES = [
    ({"input_uri": "/local/a.wav", "output_uri": "s3://bkt/out/a"}, "must start with 's3://'"),
    ({"input_uri": "s3://bkt/a.wav", "output_uri": "gs://bkt/out/a"}, "must start with 's3://'"),
    ({"input_uri": "s3://my_bucket/a.wav", "output_uri": "s3://bkt/out/a"}, "bucket name 'my_bucket' may contain only lowercase"),
    ({"input_uri": "s3://b/a.wav", "output_uri": "s3://bkt/out/a"}, "bucket name 'b' must be 3 to 63 characters long"),
    ({**GOOD, "engine": "whisper.cpp"}, "unknown engine 'whisper.cpp'"),
    ({**GOOD, "max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
    ({**GOOD, "max_retries": "3"}, 'max_retries must be an integer >= 0, got "3"'),
    ({**GOOD, "backoff_factor": 0.5}, "backoff_factor must be a number >= 1, got 0.5"),
    ({**GOOD, "priority": True}, "priority must be an integer, got true"),
    ({**GOOD, "formats": ["srt", "pdf"]}, "unknown output format(s) ['pdf']"),
    ({**GOOD, "beam_size": 3}, "unknown field(s) ['beam_size']"),
    ({"input_uri": "s3://bkt/a.wav"}, "missing required field(s) ['output_uri']"),
    ('{"input_uri": "s3://bkt/a.wav", "output_uri": ', "bad JSON: Expecting value (column 47)"),
    ("[1, 2]", "expected a JSON object, got list"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_manifest_line_rejects_everything(cli, store, tmp_path, line, reason):
    path = write_manifest(tmp_path, GOOD, {"input_uri": "s3://bkt/in/c.wav", "output_uri": "s3://bkt/out/c"}, line)
    result = cli("submit", "--manifest", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: line 3: ")
    assert reason in result.stderr
    assert store.stats().total == 0  # the two good lines were not inserted either


def test_missing_manifest_file(cli, tmp_path):
    result = cli("submit", "--manifest", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "cannot read manifest" in result.stderr and "No such file or directory" in result.stderr


# --- status, tasks, show -----------------------------------------------------------------------


def _populate(store) -> None:
    from raytranscribe.store import NewTask

    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in range(1, 5)])
    c = {x.id: x for x in store.claim(3, "orch-test", lease_s=60)}
    store.complete(1, c[1].attempt, TaskResult(30.0, "en", ("s3://bkt/out/1.json",), "hi"), actor="actor-7")
    store.fail(2, c[2].attempt, Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found", False, 404))


def test_status_table_and_json(cli, store):
    _populate(store)
    table = cli("status")
    assert table.exit_code == 0, table.output
    for needle in ("pending", "in_progress", "completed", "dead", "retries scheduled: 0",
                   "download: 404 Not Found (permanent error)", "audio completed: 0.01 h (30.0 s)"):  # fmt: skip
        assert needle in table.stdout, needle
    doc = json.loads(cli("status", "--json").stdout)
    assert doc["counts"] == {"pending": 1, "in_progress": 1, "completed": 1, "failed": 0, "dead": 1, "cancelled": 0}
    assert doc["top_failure_reasons"] == [{"reason": "download: 404 Not Found (permanent error)", "count": 1}]
    assert doc["audio_seconds_completed"] == 30.0 and doc["retries_scheduled"] == 0 and doc["total"] == 4


def test_tasks_listing(cli, store):
    _populate(store)
    doc = json.loads(cli("tasks", "--json").stdout)
    assert [(t["id"], t["status"]) for t in doc] == [(1, "completed"), (2, "dead"), (3, "in_progress"), (4, "pending")]
    dead = json.loads(cli("tasks", "--status", "dead", "--json").stdout)
    assert [(t["id"], t["failure_reason"]) for t in dead] == [(2, "download: 404 Not Found (permanent error)")]
    table = cli("tasks", "--status", "completed")
    assert table.exit_code == 0 and "s3://bkt/in/1.wav" in table.stdout and "s3://bkt/in/2.wav" not in table.stdout
    bad = cli("tasks", "--status", "exploded")
    assert bad.exit_code == 2 and "exploded" in bad.output


def test_show_with_attempts(cli, store):
    _populate(store)
    result = cli("show", "2")
    assert result.exit_code == 0, result.output
    for needle in ("task 2", "dead", "InputMissing: 404 Not Found (HTTP 404)", "orch-test", "permanent error"):
        assert needle in result.stdout, needle
    doc = json.loads(cli("show", "1", "--json").stdout)
    assert (doc["status"], doc["audio_duration_s"], doc["output_uris"]) == ("completed", 30.0, ["s3://bkt/out/1.json"])
    assert [(a["attempt"], a["outcome"], a["actor"]) for a in doc["attempts"]] == [(1, "completed", "actor-7")]
    missing = cli("show", "99")
    assert (missing.exit_code, missing.stderr.strip()) == (1, "error: task 99 not found")


# --- retry, cancel -----------------------------------------------------------------------------


def test_retry_by_id_and_by_status(cli, store):
    _populate(store)
    assert cli("retry", "1", "3").stdout.strip() == "requeued 0 task(s)"  # completed, in_progress: untouched
    assert cli("retry", "--status", "dead").stdout.strip() == "requeued 1 task(s)"
    t = store.get(2)
    assert (t.status, t.retries, len(t.attempts)) == (TaskStatus.PENDING, 0, 1)
    refused = cli("retry", "--status", "completed")
    assert refused.exit_code == 2 and "cannot requeue completed tasks" in refused.stderr
    assert cli("retry").exit_code == 2


def test_cancel(cli, store):
    _populate(store)
    result = cli("cancel", "1", "3", "4")
    assert (result.exit_code, result.stdout.strip()) == (0, "cancelled 2 of 3 task(s)")
    assert [store.get(i).status for i in (1, 3, 4)] == [TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.CANCELLED]
    assert cli("retry", "3").stdout.strip() == "requeued 1 task(s)"


# --- helpers -----------------------------------------------------------------------------------


def test_submit_prefix_lists_audio_and_skips_what_is_submitted(cli, store, local_s3, s3_client, bucket):
    """A prefix expands over real HTTP (moto) into every audio object below it, paginated."""
    keys = ["in/a.wav", "in/sub dir/b.mp3", "in/ünï/c.flac", "in/notes.txt", "in/deep/er/d.m4a", "other/e.wav"]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    env = {"RAYTRANSCRIBE_S3__ENDPOINT_URL": local_s3.endpoint_url}
    first = cli("submit", f"s3://{bucket}/in/a.wav", "--output", f"s3://{bucket}/out", env=env)
    assert first.exit_code == 0, first.output

    result = cli("submit", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/out/", "--json", env=env)

    assert result.exit_code == 0, result.output
    assert "4 audio object(s), 1 already submitted" in result.stderr
    assert len(json.loads(result.stdout)["inserted"]) == 3
    stems = {t.input_uri: t.output_uri for t in store.list_tasks()}
    assert stems == {
        f"s3://{bucket}/in/a.wav": f"s3://{bucket}/out/a",
        f"s3://{bucket}/in/sub dir/b.mp3": f"s3://{bucket}/out/sub dir/b",
        f"s3://{bucket}/in/ünï/c.flac": f"s3://{bucket}/out/ünï/c",
        f"s3://{bucket}/in/deep/er/d.m4a": f"s3://{bucket}/out/deep/er/d",
    }


def test_console_script_entry_point(database_url, store):
    """The installed way in: `python -m raytranscribe.cli` in a real subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "raytranscribe.cli", "--database-url", database_url, "status", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == 0


def test_submit_takes_engine_and_model_defaults_from_settings(cli, store):
    result = cli("submit", "s3://bkt/in/a.wav", "--output", "s3://bkt/out",
                 env={"RAYTRANSCRIBE_ENGINE__ENGINE": "openai-whisper", "RAYTRANSCRIBE_ENGINE__MODEL": "base.en"})
    assert result.exit_code == 0, result.output
    (task,) = store.list_tasks()
    assert (task.engine, task.model) == ("openai-whisper", "base.en")
