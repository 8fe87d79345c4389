"""The real `raytranscribe` commands against the real test database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from raytranscribe.cli import app
from raytranscribe.contracts import TaskResult
from raytranscribe.errors import Failure, Stage
from raytranscribe.pool import ActorView
from raytranscribe.store import NewTask, TaskStatus
from tests.store.test_schema import HEAD
from tests.support.db import create_database, drop_database


def write_manifest(tmp_path: Path, *lines: str | dict) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


GOOD = {"input_uri": "s3://bkt/in/a.wav", "output_uri": "s3://bkt/out/a"}
ROOT = Path(__file__).resolve().parents[1]


# --- the program itself: version, help, shell completion ----------------------------------------


def _program(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The app of this checkout as a shell runs it, under its installed name (completion keys on it)."""
    code = "from raytranscribe.cli import app; app(prog_name='raytranscribe')"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_version_prints_the_package_version_and_reads_no_settings():
    from raytranscribe import __version__

    # It answers while the options are parsed, before the root callback reads a setting: a broken one cannot hide it.
    broken = {"RAYTRANSCRIBE_DATABASE_URL_FILE": "/nonexistent/url", "RAYTRANSCRIBE_LOG_LEVEL": "LOUD"}
    proc = _program("--version", env=broken)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"raytranscribe {__version__}\n", "")
    # The distribution's version is that same attribute, not a second copy.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "raytranscribe.__version__"}


def test_help_lists_version_and_completion_options():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--version", "--install-completion", "--show-completion", "--database-url"):
        assert option in result.output


def test_shell_completion_completes_commands_and_their_options():
    bash = _program(
        env={"_RAYTRANSCRIBE_COMPLETE": "complete_bash", "COMP_WORDS": "raytranscribe su", "COMP_CWORD": "1"}
    )
    assert (bash.returncode, bash.stdout.split()) == (0, ["submit"])
    zsh = _program(
        env={"_RAYTRANSCRIBE_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "raytranscribe submit --for"}
    )
    assert zsh.returncode == 0 and '"--formats"' in zsh.stdout
    # Typer names the shell it finds among the program's parents (shellingham): run it from a bash that
    # stays its parent (a compound command: bash does not exec it).
    code = "from raytranscribe.cli import app; app(prog_name='raytranscribe')"
    script = subprocess.run(["bash", "-c", f'"{sys.executable}" -c "{code}" --show-completion; exit $?'], capture_output=True,
                            text=True, timeout=60, cwd=ROOT, check=False)  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _raytranscribe_completion raytranscribe" in script.stdout


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
        (["s3://bkt/a/t.wav", "s3://bkt/b/t.mp3", "--output", "s3://out/x"],
         "inputs 's3://bkt/a/t.wav' and 's3://bkt/b/t.mp3' would both write s3://out/x/t.*"),
        # numbers the tasks table cannot hold: named, before any work
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--priority", "2147483648"],
         "priority must be an integer from -2147483648 to 2147483647, got 2147483648"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--priority", "-2147483649"], "priority must be an integer from"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--max-retries", "2147483648"],
         "max_retries must be an integer from 0 to 2147483647, got 2147483648"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--backoff-factor", "inf"], "backoff_factor must be a finite number >= 1, got inf"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--backoff-factor", "nan"], "backoff_factor must be a finite number >= 1, got nan"),
        # dot and empty segments: no transfer may reach another object, no output leave its prefix
        (["s3://bkt/in/a.wav", "-o", "s3://out/a/../../in/"],
         "invalid --output 's3://out/a/../../in/': key 'a/../../in/' has a '..' segment"),
        (["s3://bkt/x/..", "-o", "s3://out/x/"], "invalid input URI 's3://bkt/x/..': key 'x/..' has a '..' segment"),
        (["s3://bkt/./a.wav", "-o", "s3://out/x/"], "key './a.wav' has a '.' segment"),
        (["s3://bkt/a//b.wav", "-o", "s3://out/x/"], "key 'a//b.wav' has an empty segment"),
        # Whisper's options, each named
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--task", "summarize"],
         'task must be one of transcribe, translate, got "summarize"'),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--task", "translate"],
         "task translate needs a multilingual model: 'tiny.en' is English-only"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--task", "translate", "--model", "s3://m/models/base.en/"],
         "'s3://m/models/base.en/' is English-only"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--beam-size", "0"], "beam_size must be an integer >= 1, got 0"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--temperature", "1.5"], "temperature must be a number from 0 to 1, got 1.5"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--temperature", "nan"], "temperature must be a number from 0 to 1, got NaN"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--initial-prompt", "x" * 2001],
         "initial_prompt must be at most 2000 characters, got 2001"),
        (["s3://bkt/a.wav", "-o", "s3://out/x", "--formats", "all,docx"], "unknown output format(s) ['docx']"),
    ],
)
def test_submit_rejects_bad_arguments(cli, store, args, message):
    result = cli("submit", *args)
    assert message in _one_error_line(result, 2)
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


# The prompt shares no word with tests.engines.test_options's German markers: Whisper may echo it.
ALL_OPTIONS = {"task": "translate", "word_timestamps": True, "initial_prompt": "A software licence.", "beam_size": 2,
               "temperature": 0.2, "vad": True}  # fmt: skip


def test_whisper_options_from_flags_and_manifest_fields_are_stored_and_shown(cli, store, tmp_path):
    flags = ("--model", "base", "--task", "translate", "--word-timestamps", "--initial-prompt", "Names: Kenobi.",
             "--beam-size", "3", "--temperature", "0.4", "--no-vad", "--formats", "all")  # fmt: skip
    assert cli("submit", "s3://bkt/in/a.wav", "-o", "s3://bkt/out/", *flags).exit_code == 0
    a = store.get(1).options
    assert (a.task, a.word_timestamps, a.initial_prompt, a.beam_size, a.temperature, a.vad_filter, a.formats) == (
        "translate", True, "Names: Kenobi.", 3, 0.4, False, ("json", "srt", "vtt", "txt", "tsv"))  # fmt: skip
    # A manifest: a line's fields win over the flags, a field left out takes the flag, a flag left out the default.
    path = write_manifest(
        tmp_path,
        {"input_uri": "s3://bkt/in/b.wav", "output_uri": "s3://bkt/out/b", "model": "base", "formats": "all",
         **ALL_OPTIONS},
        {"input_uri": "s3://bkt/in/c.wav", "output_uri": "s3://bkt/out/c", "beam_size": 1, "initial_prompt": None},
        {"input_uri": "s3://bkt/in/d.wav", "output_uri": "s3://bkt/out/d", "temperature": 0},
    )  # fmt: skip
    result = cli("submit", "--manifest", path, "--beam-size", "4", "--initial-prompt", "Hi.", "--json")
    assert json.loads(result.stdout)["inserted"] == [2, 3, 4], result.output
    b, c, d = (store.get(i).options for i in (2, 3, 4))
    assert (b.task, b.word_timestamps, b.initial_prompt, b.beam_size, b.temperature, b.vad_filter, b.formats) == (
        "translate", True, "A software licence.", 2, 0.2, True, ("json", "srt", "vtt", "txt", "tsv"))  # fmt: skip
    default = store.get(4).options.__class__()
    assert (c.beam_size, c.initial_prompt, c.task, c.vad_filter) == (1, None, "transcribe", default.vad_filter)
    assert (d.beam_size, d.initial_prompt, d.temperature) == (4, "Hi.", 0.0)
    # `show` says them, as a table and as JSON
    shown = cli("show", "2")
    assert shown.exit_code == 0 and '"task": "translate"' in shown.stdout and '"beam_size": 2' in shown.stdout
    doc = json.loads(cli("show", "2", "--json").stdout)["options"]
    assert {k: doc[k] for k in ("task", "word_timestamps", "initial_prompt", "beam_size", "temperature", "vad_filter")} == {
        **{k: v for k, v in ALL_OPTIONS.items() if k != "vad"}, "vad_filter": True}  # fmt: skip
    # 0 and 0.0, 1 and true are told apart: the second line is the same task as the first, the third is refused
    again = write_manifest(tmp_path, {**GOOD, "temperature": 0.0, "beam_size": 1}, {**GOOD, "temperature": 0, "beam_size": 1},
                           {"input_uri": "s3://bkt/in/e.wav", "output_uri": "s3://bkt/out/e", "beam_size": True})  # fmt: skip
    refused = cli("submit", "--manifest", again)
    assert _one_error_line(refused, 2) == "error: line 3: beam_size must be an integer >= 1, got true"
    # backfill takes the same flags, checked before it lists, submits or starts anything
    backfill = cli("backfill", "s3://bkt/in/", "-o", "s3://bkt/out/", "--temperature", "-0.1")
    assert _one_error_line(backfill, 2) == "error: temperature must be a number from 0 to 1, got -0.1"
    assert store.stats().total == 4


BAD_LINES = [
    ({"input_uri": "/local/a.wav", "output_uri": "s3://bkt/out/a"}, "must start with 's3://'"),
    ({"input_uri": "s3://bkt/a.wav", "output_uri": "gs://bkt/out/a"}, "must start with 's3://'"),
    ({"input_uri": "s3://my_bucket/a.wav", "output_uri": "s3://bkt/out/a"}, "bucket name 'my_bucket' may contain only lowercase"),
    ({"input_uri": "s3://b/a.wav", "output_uri": "s3://bkt/out/a"}, "bucket name 'b' must be 3 to 63 characters long"),
    ({**GOOD, "engine": "whisper.cpp"}, "unknown engine 'whisper.cpp'"),
    ({**GOOD, "max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
    ({**GOOD, "max_retries": "3"}, 'max_retries must be an integer >= 0, got "3"'),
    ({**GOOD, "backoff_factor": 0.5}, "backoff_factor must be a finite number >= 1, got 0.5"),
    # numbers the tasks table cannot hold, and what strict JSON refuses
    ({**GOOD, "priority": 2147483648}, "priority must be an integer from -2147483648 to 2147483647, got 2147483648"),
    ({**GOOD, "max_retries": 2**31}, "max_retries must be an integer from 0 to 2147483647, got 2147483648"),
    ('{"input_uri": "s3://bkt/a.wav", "output_uri": "s3://bkt/out/a", "backoff_factor": Infinity}',
     "Infinity is not a JSON number"),
    ('{"input_uri": "s3://bkt/a.wav", "output_uri": "s3://bkt/out/a", "backoff_factor": NaN}', "NaN is not a JSON number"),
    ('{"input_uri": "s3://bkt/a.wav", "output_uri": "s3://bkt/out/a", "priority": 1' + "0" * 5000 + "}",
     "bad JSON: Exceeds the limit"),
    ('{"input_uri": "s3://bkt/a.wav", "output_uri": "s3://bkt/out/a", "input_uri": "s3://bkt/b.wav"}',
     "field 'input_uri' is given twice"),
    # dot and empty segments, in either URI
    ({"input_uri": "s3://bkt/dd/../evil/x.wav", "output_uri": "s3://bkt/out/x"},
     "invalid input_uri 's3://bkt/dd/../evil/x.wav': key 'dd/../evil/x.wav' has a '..' segment"),
    ({"input_uri": "s3://bkt/x.wav", "output_uri": "s3://bkt/out/../../in/x"}, "invalid output_uri 's3://bkt/out/../../in/x'"),
    ({"input_uri": "s3://bkt/x.wav", "output_uri": "s3://bkt/a/../"}, "invalid output_uri 's3://bkt/a/../': key 'a/../'"),
    ({"input_uri": "s3://bkt/x.wav", "output_uri": "s3://bkt/out//x"}, "has an empty segment"),
    ({**GOOD, "priority": True}, "priority must be an integer, got true"),
    ({**GOOD, "formats": ["srt", "pdf"]}, "unknown output format(s) ['pdf']"),
    ({**GOOD, "beam": 3}, "unknown field(s) ['beam']"),
    # Whisper's options: each checked where every option is, named, on its line
    ({**GOOD, "task": "summarize"}, 'task must be one of transcribe, translate, got "summarize"'),
    ({**GOOD, "task": "translate"}, "task translate needs a multilingual model: 'tiny.en' is English-only"),
    ({**GOOD, "model": "distil-small.en", "task": "translate"}, "'distil-small.en' is English-only"),
    ({**GOOD, "beam_size": 0}, "beam_size must be an integer >= 1, got 0"),
    ({**GOOD, "beam_size": True}, "beam_size must be an integer >= 1, got true"),
    ({**GOOD, "beam_size": 2.0}, "beam_size must be an integer >= 1, got 2.0"),
    ({**GOOD, "beam_size": None}, "beam_size must be an integer >= 1, got null"),
    ({**GOOD, "temperature": 1.01}, "temperature must be a number from 0 to 1, got 1.01"),
    ({**GOOD, "temperature": "0.2"}, 'temperature must be a number from 0 to 1, got "0.2"'),
    ({**GOOD, "word_timestamps": "yes"}, 'word_timestamps must be true or false, got "yes"'),
    ({**GOOD, "vad": 1}, "vad must be true or false, got 1"),
    ({**GOOD, "initial_prompt": ["a"]}, 'initial_prompt must be a string, got ["a"]'),
    ({**GOOD, "initial_prompt": "x" * 2001}, "initial_prompt must be at most 2000 characters, got 2001"),
    ({**GOOD, "initial_prompt": "a\u0000b"}, "initial_prompt must not contain a NUL character"),
    ({"input_uri": "s3://bkt/a.wav"}, "missing required field(s) ['output_uri']"),
    ('{"input_uri": "s3://bkt/a.wav", "output_uri": ', "bad JSON: Expecting value (column 47)"),
    ("[1, 2]", "expected a JSON object, got list"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_manifest_line_rejects_everything(cli, store, tmp_path, line, reason):
    path = write_manifest(tmp_path, GOOD, {"input_uri": "s3://bkt/in/c.wav", "output_uri": "s3://bkt/out/c"}, line)
    result = cli("submit", "--manifest", path)
    line = _one_error_line(result, 2)
    assert line.startswith("error: line 3: ")
    assert reason in line
    assert store.stats().total == 0  # the two good lines were not inserted either


def test_manifest_output_uri_may_be_a_prefix(cli, store, tmp_path):
    """A trailing '/' means: under this prefix, named after the input file, as `submit --output PREFIX` does."""
    path = write_manifest(
        tmp_path,
        {"input_uri": "s3://bkt/in/x/talk.final.mp3", "output_uri": "s3://out-bkt/run1/"},
        {"input_uri": "s3://bkt/in/y/b.wav", "output_uri": "s3://out-bkt/"},
        {"input_uri": "s3://bkt/in/c.wav", "output_uri": "s3://out-bkt/named/c-stem"},  # a stem, as before
    )
    result = cli("submit", "--manifest", path)
    assert result.exit_code == 0, result.output
    assert [t.output_uri for t in store.list_tasks()] == [
        "s3://out-bkt/run1/talk.final", "s3://out-bkt/b", "s3://out-bkt/named/c-stem"]  # fmt: skip


@pytest.mark.parametrize(
    "second",
    [
        {"input_uri": "s3://bkt/in/other.wav", "output_uri": "s3://bkt/out/a"},  # the same stem, spelled out
        {"input_uri": "s3://bkt/in/z/a.flac", "output_uri": "s3://bkt/out/"},  # the same stem, from a prefix
    ],
)
def test_manifest_lines_writing_one_stem_are_refused_naming_both(cli, store, tmp_path, second):
    path = write_manifest(tmp_path, GOOD, second)
    result = cli("submit", "--manifest", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: inputs 's3://bkt/in/a.wav' and {second['input_uri']!r} would both write s3://bkt/out/a.*; "
        "give each its own output"
    )
    assert store.stats().total == 0


def test_formats_are_normalised_and_an_unfinished_task_keeps_its_stem(cli, store):
    """--formats txt, txt,txt, txt,json, json,txt on one input: one task, not four writing one dedupe.txt."""
    base = ["submit", "s3://bkt/in/dedupe.wav", "-o", "s3://bkt/out/", "--formats"]
    assert cli(*base, "txt").exit_code == 0
    again = cli(*base, "txt,txt")
    assert (again.exit_code, again.stdout.splitlines()[0]) == (0, "submitted 0 task(s); 1 duplicate(s) skipped")
    for formats in ("txt,json", "json,txt"):
        refused = cli(*base, formats)
        assert refused.exit_code == 2, refused.output
        assert refused.stderr.strip() == (
            "error: input 's3://bkt/in/dedupe.wav' would write s3://bkt/out/dedupe.*, which task 1 (the same input, "
            "pending) may still write; wait for it, cancel it, or give this input another output"
        )
    assert [(t.id, t.options.formats) for t in store.list_tasks()] == [(1, ("txt",))]


def test_many_duplicates_print_a_count_not_a_line_each(cli, store, tmp_path):
    lines = [{"input_uri": f"s3://bkt/in/{i}.wav", "output_uri": f"s3://bkt/out/{i}"} for i in range(2500)]
    path = write_manifest(tmp_path, *lines)
    assert cli("submit", "--manifest", path).exit_code == 0
    again = cli("submit", "--manifest", path)
    assert again.exit_code == 0, again.output
    out = again.stdout.splitlines()
    assert out[0] == "submitted 0 task(s); 2500 duplicate(s) skipped"
    assert out[1:] == [f"  duplicate: s3://bkt/in/{i}.wav" for i in range(10)] + [
        "  ... and 2490 more (--json lists them all)"]  # fmt: skip
    assert len(json.loads(cli("submit", "--manifest", path, "--json").stdout)["duplicates"]) == 2500


BATCH_LINES = 10_001  # a line past the store's submit batch (SUBMIT_BATCH, 10,000)


def test_a_manifest_longer_than_a_batch_finds_repeats_across_batches_and_logs_progress(cli, store, tmp_path):
    from raytranscribe.store.submit import SUBMIT_BATCH

    assert BATCH_LINES > SUBMIT_BATCH
    lines = [{"input_uri": f"s3://bkt/in/{i}.wav", "output_uri": f"s3://bkt/out/{i}"} for i in range(BATCH_LINES)]
    path = write_manifest(tmp_path, *lines, lines[3], lines[SUBMIT_BATCH])  # repeats, in the second batch
    result = cli("submit", "--manifest", path,
                 env={"RAYTRANSCRIBE_LOG_LEVEL": "INFO", "RAYTRANSCRIBE_PROGRESS_INTERVAL_S": "0.001"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"submitted {BATCH_LINES} task(s); 2 duplicate(s) skipped",
        "  duplicate: s3://bkt/in/3.wav",
        f"  duplicate: s3://bkt/in/{SUBMIT_BATCH}.wav",
    ]
    assert f"submit: {SUBMIT_BATCH} task(s) read, " in result.stderr  # after the first batch
    assert f"submit: {BATCH_LINES + 2} task(s) read, " in result.stderr
    assert store.stats().total == BATCH_LINES
    assert [t.id for t in store.list_tasks(limit=3)] == [1, 2, 3]


def test_a_bad_line_in_a_later_batch_leaves_nothing_written(cli, store, tmp_path):
    """A manifest is one transaction: the batches copied before the bad line are rolled back with it."""
    lines = [{"input_uri": f"s3://bkt/in/{i}.wav", "output_uri": f"s3://bkt/out/{i}"} for i in range(BATCH_LINES)]
    path = write_manifest(tmp_path, *lines, {"input_uri": "s3://bkt/in/x.wav", "output_uri": "s3://bkt/out/1"})
    result = cli("submit", "--manifest", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: inputs 's3://bkt/in/1.wav' and 's3://bkt/in/x.wav' would both write s3://bkt/out/1.*; "
        "give each its own output"
    )
    path = write_manifest(tmp_path, *lines, '{"input_uri": "s3://bkt/in/y.wav"}')
    result = cli("submit", "--manifest", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: line {BATCH_LINES + 1}: missing required field(s) ['output_uri']"
    assert store.stats().total == 0


def test_missing_manifest_file(cli, tmp_path):
    result = cli("submit", "--manifest", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "cannot read manifest" in result.stderr and "No such file or directory" in result.stderr


# --- status, tasks, show -----------------------------------------------------------------------


def _populate(store) -> None:
    from raytranscribe.store import NewTask
    from tests.support.db import complete, fail

    store.submit([NewTask(f"s3://bkt/in/{i}.wav", f"s3://bkt/out/{i}") for i in range(1, 5)])
    c = {x.id: x for x in store.claim(3, "orch-test", lease_s=60)}
    complete(store, 1, c[1].attempt, TaskResult(30.0, "en", ("s3://bkt/out/1.json",), "hi"), actor="actor-7")
    fail(store, 2, c[2].attempt, Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found", False, 404))


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


def test_status_shows_each_actors_batching_and_what_the_breakers_and_pools_went_through(cli, store):
    batched = ActorView(
        name="worker-1.tiny-en.0a1b2c", pool="faster-whisper/tiny.en", state="alive", node_id="n" * 40,
        gpu_ids=("0",), in_flight=12, tasks_done=340, windows=((3, 7), (0, 2)), batch_size=8, batches=100,
        windows_decoded=620, buffered_audio_s=312.4,
    )  # fmt: skip
    halved = ActorView(
        name="worker-2.tiny-en.0a1b2c", pool="faster-whisper/tiny.en", state="alive", node_id="m" * 40,
        gpu_ids=("1",), in_flight=0, tasks_done=0, batch_size=4,
    )  # fmt: skip
    sequential = ActorView(
        name="worker-3.tiny-en.0a1b2c", pool="faster-whisper/tiny.en", state="alive", node_id="k" * 40,
        gpu_ids=("2",), in_flight=1, tasks_done=9,
    )  # fmt: skip
    store.publish_orchestrator("orch-a", {
        "owner": "orch-a", "actors": [asdict(a) for a in (batched, halved, sequential)], "in_flight": 13,
        "breakers": {"download": "open", "presign": "closed", "upload": "closed"},
        "breaker_trips": {"download": 2, "presign": 0, "upload": 0},
        "actor_starts": {"faster-whisper/tiny.en": 4},
    }, ttl_s=60)  # fmt: skip

    text = cli("status", env={"COLUMNS": "220"}).stdout

    assert ("orchestrator orch-a: 13 in flight, breakers: download open (tripped 2x), presign closed, upload closed, "
            "actors started: faster-whisper/tiny.en 4") in text, text  # fmt: skip
    rows = {line.split()[1]: line for line in text.splitlines() if "worker-" in line}
    assert "8, 6.2 a call" in rows["worker-1.tiny-en.0a1b2c"] and "312 s" in rows["worker-1.tiny-en.0a1b2c"]
    assert "| 4 " in rows["worker-2.tiny-en.0a1b2c"].replace("│", "|") and "0 s" in rows["worker-2.tiny-en.0a1b2c"]
    assert "1 (sequential)" in rows["worker-3.tiny-en.0a1b2c"]
    (doc,) = json.loads(cli("status", "--json").stdout)["orchestrators"]
    assert doc["actors"][0]["windows"] == [[3, 7], [0, 2]] and doc["breaker_trips"]["download"] == 2


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


def test_submit_checks_an_s3_model_before_writing_anything(cli, store, local_s3, s3_client, bucket, tmp_path):
    """A model prefix missing a file is refused at submit time with its name (exit 2), not N dead tasks later."""
    env = {"RAYTRANSCRIBE_S3__ENDPOINT_URL": local_s3.endpoint_url}
    for name in ("model.bin", "config.json", "vocabulary.txt"):  # no tokenizer.json
        s3_client.put_object(Bucket=bucket, Key=f"models/tiny-en/{name}", Body=b"{}")
    model = f"s3://{bucket}/models/tiny-en/"
    refused = cli("submit", f"s3://{bucket}/in/a.wav", "-o", f"s3://{bucket}/out/", "--model", model, env=env)
    assert refused.exit_code == 2, refused.output
    assert f"model {model} has no tokenizer.json" in refused.stderr
    manifest = write_manifest(tmp_path, {"input_uri": f"s3://{bucket}/in/b.wav", "output_uri": f"s3://{bucket}/out/b",
                                         "model": f"s3://{bucket}/models/typo/"})  # fmt: skip
    refused = cli("submit", "--manifest", manifest, env=env)
    assert refused.exit_code == 2 and f"model s3://{bucket}/models/typo/: no files under it" in refused.stderr
    assert store.list_tasks() == []

    s3_client.put_object(Bucket=bucket, Key="models/tiny-en/tokenizer.json", Body=b"{}")
    ok = cli("submit", f"s3://{bucket}/in/a.wav", "-o", f"s3://{bucket}/out/", "--model", model.rstrip("/"), env=env)
    assert ok.exit_code == 0, ok.output
    (task,) = store.list_tasks()
    assert task.model == model  # one spelling per model: one pool


# --- dot segments, end to end ------------------------------------------------------------------


def _objects(s3_client, bucket: str) -> dict[str, bytes]:
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", ())]
    return {k: s3_client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


DOT = "has a '..' segment, which HTTP clients resolve to another object"


def test_listed_key_with_dot_segments_refuses_the_whole_submission(cli, store, local_s3, s3_client, bucket):
    for key in ("in/a.wav", "in/dd/../evil/x.wav", "in/z.wav"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    env = {"RAYTRANSCRIBE_S3__ENDPOINT_URL": local_s3.endpoint_url}
    result = cli("submit", f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/", env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: s3://{bucket}/in/ lists s3://{bucket}/in/dd/../evil/x.wav: key 'in/dd/../evil/x.wav' {DOT}; "
        "nothing was submitted (rename or move that object, give --skip-invalid, or submit the others by URI)"
    )
    assert store.stats().total == 0
    s3_client.put_object(Bucket=bucket, Key="dbl/a//b.wav", Body=b"x")
    result = cli("submit", f"s3://{bucket}/dbl/", "-o", f"s3://{bucket}/out/", env=env)
    assert result.exit_code == 2 and "key 'dbl/a//b.wav' has an empty segment" in result.stderr


def test_skip_invalid_submits_the_other_listed_keys_naming_each_skipped_one(cli, store, local_s3, s3_client, bucket):
    long_name = "n" * 1010  # its key fits S3's 1,024 bytes; under a longer output prefix, its outputs would not
    keys = ("in/a.wav", "in/dd/../evil/x.wav", "in/z.wav", "in/e//f.mp3", f"in/{long_name}.wav")
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    env = {"RAYTRANSCRIBE_S3__ENDPOINT_URL": local_s3.endpoint_url}
    output = f"s3://{bucket}/transcripts-of-this-backfill/"
    refused = cli("submit", f"s3://{bucket}/in/", "-o", output, env=env)
    assert refused.exit_code == 2 and "nothing was submitted" in refused.stderr
    assert store.stats().total == 0

    result = cli("submit", f"s3://{bucket}/in/", "-o", output, "--skip-invalid", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "submitted 2 task(s); 0 duplicate(s) skipped; 3 invalid key(s) skipped"
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped[0] == f"skipped s3://{bucket}/in/dd/../evil/x.wav: key 'in/dd/../evil/x.wav' {DOT}"
    assert skipped[1] == (
        f"skipped s3://{bucket}/in/e//f.mp3: key 'in/e//f.mp3' has an empty segment ('//' or a leading '/')"
    )
    assert skipped[2].startswith(f"skipped s3://{bucket}/in/nnnn") and "S3 allows at most 1024" in skipped[2]
    assert f"s3://{bucket}/in/: 5 audio object(s), 0 already submitted, 3 skipped (invalid key)" in result.stderr
    assert sorted(t.input_uri for t in store.list_tasks()) == [f"s3://{bucket}/in/a.wav", f"s3://{bucket}/in/z.wav"]

    again = cli("submit", f"s3://{bucket}/in/", "-o", output, "--skip-invalid", "--json", env=env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {"inserted": [], "duplicates": [], "skipped": 3}
    assert "5 audio object(s), 2 already submitted, 3 skipped (invalid key)" in again.stderr
    manifest = cli("submit", "--manifest", "tasks.jsonl", "--skip-invalid")
    assert manifest.exit_code == 2 and "--skip-invalid applies to listed prefixes" in manifest.stderr


@pytest.mark.timeout(600)  # above the run's own 420 s watchdog (and its 30 s stop), so that one reports
def test_dot_segments_never_reach_s3_in_a_real_run(cli, system, local_s3, s3_client, tmp_path):
    """Issue 11 item 2 through a real run (Ray, tiny.en, moto over HTTP): what is refused writes nothing,
    a row stored before the check existed dies at presign, and every object written lies under its prefix."""
    from tests.support.speech import wer

    b = system.bucket
    env = {"RAYTRANSCRIBE_S3__ENDPOINT_URL": local_s3.endpoint_url}
    ((dotted, _),) = system.upload_samples(["doctor.flac"], prefix="in/dd/../evil/")
    ((good, sentence),) = system.upload_samples(["fox.wav"], prefix="in/ok/")
    system.put("in/evil/doctor.flac", b"decoy: a resolved '..' path would read this")
    before = _objects(s3_client, b)
    assert "in/dd/../evil/doctor.flac" in before  # stored literally

    listed = cli("submit", f"s3://{b}/in/", "-o", f"s3://{b}/out/", env=env)
    assert listed.exit_code == 2 and f"lists {dotted}: key 'in/dd/../evil/doctor.flac' {DOT}" in listed.stderr
    climbing = cli("submit", good, "-o", f"s3://{b}/out/a/../../in/", env=env)
    assert climbing.exit_code == 2 and f"invalid --output 's3://{b}/out/a/../../in/'" in climbing.stderr
    root = cli("submit", f"s3://{b}/in/x/..", "-o", f"s3://{b}/out/", env=env)
    assert root.exit_code == 2 and "audio object(s)" not in root.stderr  # refused before any listing
    assert system.store.stats().total == 0

    assert cli("submit", good, "-o", f"s3://{b}/out/", env=env).exit_code == 0
    # The same input again, into a prefix named by a manifest line (txt only: another task, another stem).
    path = write_manifest(tmp_path, {"input_uri": good, "output_uri": f"s3://{b}/out/m/", "formats": ["txt"]})
    assert cli("submit", "--manifest", path, env=env).exit_code == 0
    # A row stored before these checks existed, aimed at the input bucket: the driver refuses to sign it.
    engine = sa.create_engine(system.database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key) "
                        "VALUES (:i, :o, 'faster-whisper', 'tiny.en', 0, 2.0, 'stored-before-the-check')"),
                {"i": dotted, "o": f"s3://{b}/out/../in/evil/doctor"},
            )  # fmt: skip
    finally:
        engine.dispose()

    system.run(system.settings.with_(health={"task_deadline_base_s": 300.0}), timeout=420)  # room for a busy machine: this test is about where objects land

    tasks = {t.input_uri + " " + t.output_uri: t for t in system.store.list_tasks()}
    old = tasks[f"{dotted} s3://{b}/out/../in/evil/doctor"]
    assert old.status is TaskStatus.DEAD
    assert old.failure_reason.startswith(f"presign: cannot presign task: invalid S3 URI {dotted!r}: key ")
    assert {t.status for k, t in tasks.items() if t.id != old.id} == {TaskStatus.COMPLETED}
    system.check_invariants()
    after = _objects(s3_client, b)
    written = {k: v for k, v in after.items() if k not in before}
    assert sorted(written) == ["out/fox.json", "out/fox.srt", "out/fox.txt", "out/fox.vtt", "out/m/fox.txt"]
    assert {k: after[k] for k in before} == before  # inputs and the decoy untouched
    assert wer(sentence, written["out/fox.txt"].decode()) <= 0.25
    assert written["out/m/fox.txt"] == written["out/fox.txt"]


# --- bad URLs, settings and databases: one line, the right exit code, before anything starts -----


def _plain_url(url: str, scheme: str = "postgresql") -> str:
    """The URL as every PostgreSQL tool writes it: no SQLAlchemy driver in the scheme."""
    return scheme + "://" + url.partition("://")[2]


def _one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--database-url", "not a url", "status"], {},
         "error: invalid database URL 'not a url': expected postgresql://user[:password]@host[:port]/database"),
        (["--database-url", "postgresql+asyncpg://bob:hunter2@db/x", "tasks"], {},
         "error: unsupported database driver 'asyncpg' in 'postgresql+asyncpg://bob:***@db/x': raytranscribe connects "
         "through psycopg2; write postgresql://user[:password]@host[:port]/database"),
        (["--log-level", "BOGUS", "status"], {},
         "error: invalid --log-level 'BOGUS': choose from DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (["status"], {"RAYTRANSCRIBE_LOG_LEVEL": "loud"},
         "error: invalid RAYTRANSCRIBE_LOG_LEVEL 'LOUD': choose from DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (["status"], {"RAYTRANSCRIBE_STORE__OP_RETRIES": "many"},
         "error: invalid setting RAYTRANSCRIBE_STORE__OP_RETRIES: Input should be a valid integer, unable to parse "
         "string as an integer"),
        (["status"], {"RAYTRANSCRIBE_RETRY": "{max_retries: 5}"},
         "error: invalid setting RAYTRANSCRIBE_RETRY: Input should be a valid dictionary or instance of RetrySettings"),
    ],
    ids=["not-a-url", "asyncpg", "log-level-option", "log-level-env", "setting", "group-not-json"],
)
def test_bad_url_log_level_or_setting_is_one_line_and_exit_2(cli, args, env, message):
    result = cli(*args, env=env)
    assert _one_error_line(result, 2) == message
    assert "hunter2" not in result.output


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgresql_urls_work(cli, database_url, scheme):
    result = cli("--database-url", _plain_url(database_url, scheme), "status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == 0


def test_db_upgrade_with_a_plain_postgresql_url(database_url):
    """`raytranscribe db upgrade` with postgresql://user@host/db said "No module named 'psycopg'"."""
    admin = sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    url = create_database(admin, prefix="rt_cli")
    try:
        result = CliRunner().invoke(app, ["--database-url", _plain_url(url), "db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert f"database schema at revision {HEAD}" in result.stdout
    finally:
        drop_database(url)


@pytest.fixture
def unmigrated_url(database_url):
    admin = sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    url = create_database(admin, prefix="rt_cli_bare")
    yield url
    drop_database(url)


@pytest.mark.parametrize(
    "args",
    [["status"], ["status", "--json"], ["tasks", "--status", "dead"], ["submit", "s3://bkt/in/a.wav", "-o", "s3://bkt/out/"]],
)
def test_an_unmigrated_database_says_to_run_db_upgrade(cli, unmigrated_url, args):
    line = _one_error_line(cli("--database-url", unmigrated_url, *args), 2)
    assert line.endswith("run `raytranscribe db upgrade`"), line
    assert "no raytranscribe schema" in line


def test_a_database_that_refuses_the_role_fails_at_once_with_exit_2(cli, database_url):
    url = sa.engine.make_url(database_url).set(username="rt_no_such_role").render_as_string(hide_password=False)
    result = cli("--database-url", url, "status", env={"RAYTRANSCRIBE_STORE__OP_RETRIES": "5",
                                                         "RAYTRANSCRIBE_STORE__OP_RETRY_BASE_S": "1"})  # fmt: skip
    assert "transient database error" not in result.stderr  # refused at once: not one retry logged
    line = _one_error_line(result, 2)
    assert 'role "rt_no_such_role" does not exist' in line and "not retried" in line


def test_retry_and_cancel_say_which_ids_were_left_alone(cli, store):
    _populate(store)  # 1 completed, 2 dead, 3 in_progress, 4 pending
    nothing = cli("retry", "1", "3", "4", "99")
    assert nothing.exit_code == 1
    assert nothing.stdout.strip() == "requeued 0 task(s)"
    assert nothing.stderr.strip().splitlines() == [
        "not requeued: 1: completed (only failed, dead, cancelled tasks can be requeued)",
        "not requeued: 3: in_progress (only failed, dead, cancelled tasks can be requeued)",
        "not requeued: 4: pending (only failed, dead, cancelled tasks can be requeued)",
        "not requeued: 99: no such task",
    ]
    some = cli("retry", "2", "1")
    assert (some.exit_code, some.stdout.strip()) == (0, "requeued 1 task(s)")
    assert some.stderr.strip() == "not requeued: 1: completed (only failed, dead, cancelled tasks can be requeued)"
    none_cancelled = cli("cancel", "1", "1", "77", "78")
    assert none_cancelled.exit_code == 1
    assert none_cancelled.stdout.strip() == "cancelled 0 of 3 task(s)"
    assert none_cancelled.stderr.strip().splitlines() == [
        "not cancelled: 1: completed (only pending, in_progress, failed tasks can be cancelled)",
        "not cancelled: 77, 78: no such task",
    ]
    # --status with nothing in it is not an error: there was nothing to do.
    assert cli("retry", "--status", "cancelled").exit_code == 0
    # Ids and --status: the rule named is the status asked for.
    mixed = cli("retry", "2", "--status", "dead")  # 2 was requeued above: pending now
    assert (mixed.exit_code, mixed.stderr.strip()) == (1, "not requeued: 2: pending (only dead tasks can be requeued)")


def _run_subprocess(url: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYTRANSCRIBE_"))}
    env.update({"RAYTRANSCRIBE_DATABASE_URL": url, "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"})
    env.update(dict(e.split("=", 1) for e in extra))
    return subprocess.run(
        [sys.executable, "-m", "raytranscribe.cli", "run", "--until-drained", "--local-cpus", "1"],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def test_run_on_an_unreachable_database_exits_3_before_starting_ray():
    """The store's retries, then exit 3: no Ray started, no "claiming paused" logged forever."""
    proc = _run_subprocess("postgresql://postgres@127.0.0.1:1/x", "RAYTRANSCRIBE_STORE__OP_RETRIES=2",
                           "RAYTRANSCRIBE_STORE__OP_RETRY_BASE_S=0.05")  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "claiming paused" not in proc.stderr  # it gave up before any orchestrator ran
    assert "error: store current_revision: database unavailable after 3 tries: " in proc.stderr
    assert "port 1 failed: Connection refused" in proc.stderr
    assert "ray" not in proc.stderr.lower().replace("raytranscribe", "")  # Ray never started


def test_run_on_an_unmigrated_database_exits_2_saying_db_upgrade(unmigrated_url):
    proc = _run_subprocess(unmigrated_url)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: the database has no raytranscribe schema: run `raytranscribe db upgrade`"
    )


def test_status_shows_each_actors_device_compute_type_and_gpu(cli, store):
    cuda = ActorView(name="worker-1.large-v3-turbo.0a1b2c", pool="faster-whisper/large-v3-turbo", state="alive",
                     node_id="n" * 40, gpu_ids=("0",), in_flight=3, tasks_done=10, device="cuda",
                     compute_type="float16", gpu_name="NVIDIA A10G")  # fmt: skip
    loading = ActorView(name="worker-2.large-v3-turbo.0a1b2c", pool="faster-whisper/large-v3-turbo",
                        state="loading", node_id=None, gpu_ids=(), in_flight=0, tasks_done=0)  # fmt: skip
    store.publish_orchestrator("orch-d", {"owner": "orch-d", "actors": [asdict(cuda), asdict(loading)],
                                          "in_flight": 3}, ttl_s=60)  # fmt: skip

    rows = {line.split()[1]: line for line in cli("status", env={"COLUMNS": "250"}).stdout.splitlines()
            if "worker-" in line}  # fmt: skip

    (alive,) = [row for name, row in rows.items() if name.startswith("worker-1")]
    (loading_row,) = [row for name, row in rows.items() if name.startswith("worker-2")]
    assert "cuda float16 (NVIDIA" in alive, alive  # the GPU's name wraps onto the next line in a narrow table
    assert re.search(r"loading\W+-\W+-\W+-\W+0", loading_row), loading_row  # node, gpus, device unknown yet
    (doc,) = json.loads(cli("status", "--json").stdout)["orchestrators"]
    assert (doc["actors"][0]["device"], doc["actors"][0]["compute_type"]) == ("cuda", "float16")


# --- progress in a job's log -------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_backfill_off_a_terminal_logs_progress_lines(system, ray_address):
    """What `ray job logs` shows of a backfill: a progress line every progress_interval_s, no bar."""
    import os
    import re

    system.upload_samples(["fox.wav", "river.mp3"], prefix="calls/")
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_address,
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
        "RAYTRANSCRIBE_ENGINE__CPU_THREADS": "1",
        "RAYTRANSCRIBE_ENGINE__DEVICE": "cpu",  # the session's GPUs are logical: reserved, never usable
        "RAYTRANSCRIBE_LEASE__HEARTBEAT_S": "0.5",
        "RAYTRANSCRIBE_NAMESPACE": system.settings.namespace + "-cli",
        "RAYTRANSCRIBE_PROGRESS_INTERVAL_S": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "raytranscribe.cli", "backfill", f"s3://{system.bucket}/calls/",
         "--output", f"s3://{system.bucket}/out/", "--actors", "1"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = re.compile(
        r"progress: completed (\d+), dead (\d+), pending (\d+), in flight (\d+) \| audio \d+\.\d\d h done, "
        r"\d+\.\d audio s/s \| ETA (\S+) \| actors (\d+)$"
    )
    lines = [m for m in (line.search(text) for text in proc.stderr.splitlines()) if m]
    assert lines, proc.stderr[-3000:]
    first = lines[0].groups()
    assert first[:2] == ("0", "0") and int(first[2]) + int(first[3]) == 2  # the first heartbeat: nothing done yet
    assert "transcribing" not in proc.stderr  # the rich bar's label: no bar off a terminal
    assert {t.status for t in system.store.list_tasks()} == {TaskStatus.COMPLETED}


# --- help, --json, and what --help spells without importing the code -----------------------------


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_command_and_option_has_help():
    import typer

    root = typer.main.get_command(app)
    commands = dict(_commands(root))
    assert {("submit",), ("retry",), ("cancel",), ("run",), ("backfill",), ("db", "upgrade")} <= set(commands)
    missing = [
        f"{' '.join(path)} {param.opts[0] if param.opts else param.name}"
        for path, command in [((), root), *commands.items()]
        for param in command.params
        if not (getattr(param, "help", None) or "").strip()
    ]
    assert missing == []
    assert all((command.help or "").strip() for command in commands.values())


def test_every_command_a_script_calls_has_json():
    import typer

    commands = dict(_commands(typer.main.get_command(app)))
    for path in (("submit",), ("status",), ("tasks",), ("show",), ("retry",), ("cancel",), ("run",), ("backfill",),
                 ("export",), ("db", "upgrade")):  # fmt: skip
        assert any("--json" in p.opts for p in commands[path].params), path


def test_names_the_help_spells_are_the_codes():
    from raytranscribe.cli import StatusChoice

    assert [s.value for s in StatusChoice] == [s.value for s in TaskStatus]


def test_help_and_the_module_import_nothing_heavy():
    heavy = ("sqlalchemy", "pydantic", "pydantic_settings", "rich", "ray", "boto3", "numpy", "av", "raytranscribe.store")
    code = (
        "import sys; from raytranscribe.cli import app\n"
        "try:\n    app(['--help'], prog_name='raytranscribe')\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and "Commands:" in proc.stdout, proc.stderr
    assert proc.stderr.strip() == ""


def test_reading_commands_import_no_sqlalchemy_alembic_ray_numpy_or_rich(store, database_url):
    """status, tasks and show read through psycopg2 alone (store.reader) and print plain tables
    (texttable): what a command imports is most of what it costs (bench/cli_startup.py times them)."""
    (task_id,) = store.submit([NewTask("s3://bkt/in/seen.wav", "s3://bkt/out/seen")]).inserted
    store.claim(1, "orch", lease_s=60)
    heavy = ("sqlalchemy", "alembic", "ray", "numpy", "boto3", "rich", "raytranscribe.store.store", "raytranscribe.orchestrator")
    code = (
        "import sys; from raytranscribe.cli import app\n"
        f"for args in (['status'], ['status', '--json'], ['tasks'], ['show', '{task_id}']):\n"
        "    try:\n        app(args, prog_name='raytranscribe')\n"
        "    except SystemExit as exc:\n        assert exc.code == 0, (args, exc.code)\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)"
    )
    env = {**os.environ, "RAYTRANSCRIBE_DATABASE_URL": database_url, "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("s3://bkt/in/seen.wav") == 2 and '"in_progress": 1' in proc.stdout  # tasks, show, status
    assert proc.stderr.strip() == ""


def test_retry_cancel_and_db_upgrade_print_json(cli, store):
    _populate(store)  # 1 completed, 2 dead, 3 in_progress, 4 pending
    refused = cli("retry", "1", "3", "99", "--json")
    assert refused.exit_code == 1  # the exit codes do not depend on the format
    assert json.loads(refused.stdout) == {
        "requeued": [], "refused": [{"id": 1, "status": "completed"}, {"id": 3, "status": "in_progress"}], "missing": [99]
    }  # fmt: skip
    requeued = cli("retry", "--status", "dead", "--json")
    assert (requeued.exit_code, json.loads(requeued.stdout)["requeued"]) == (0, [2])
    cancelled = cli("cancel", "1", "3", "4", "--json")
    assert cancelled.exit_code == 0 and cancelled.stderr == ""
    assert json.loads(cancelled.stdout) == {"cancelled": [3, 4], "refused": [{"id": 1, "status": "completed"}],
                                            "missing": []}  # fmt: skip
    upgraded = cli("db", "upgrade", "--json")
    assert (upgraded.exit_code, json.loads(upgraded.stdout)) == (0, {"revision": HEAD})


@pytest.mark.timeout(300)
def test_run_and_backfill_print_their_summary_as_json(system, ray_address):
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_address,
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
        "RAYTRANSCRIBE_NAMESPACE": system.settings.namespace + "-json",
        "RAYTRANSCRIBE_LOG_LEVEL": "WARNING",
    }

    def program(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "raytranscribe.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip

    ran = program("run", "--until-drained", "--json")  # an empty queue: drained at once
    assert ran.returncode == 0, ran.stderr[-3000:]
    doc = json.loads(ran.stdout)
    assert {k: doc[k] for k in ("completed", "retried", "dead", "released", "fenced", "stopped")} == dict.fromkeys(
        ("completed", "retried", "dead", "released", "fenced", "stopped"), 0)  # fmt: skip
    assert {"audio_s", "wall_s", "rtfx"} <= set(doc) and "run summary" not in ran.stderr

    system.put("calls/notes.txt", b"not audio")  # listed, not audio: nothing to submit
    filled = program("backfill", f"s3://{system.bucket}/calls/", "-o", f"s3://{system.bucket}/out/", "--json")
    assert filled.returncode == 0, filled.stderr[-3000:]
    doc = json.loads(filled.stdout)
    assert (doc["submitted"], doc["duplicates"], doc["skipped"], doc["run"]["completed"]) == (0, 0, 0, 0)
    assert doc["counts"] == {s.value: 0 for s in TaskStatus}
    assert "submitted 0 task(s); 0 duplicate(s) skipped" in filled.stderr


# --- Whisper's options through the whole system --------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_manifest_line_with_every_option_reaches_the_engine(cli, system, tmp_path):
    """Issue 24: a line with every field, through a real run (Ray, the multilingual base, moto): the
    task's JSON output says the options the engine ran with, and they did what they say (German
    translated to English, words timed), in a batch shared with a file that asked for none of them."""
    from raytranscribe.engines.base import TranscribeOptions
    from tests.engines.test_options import REAL, _english

    german = system.put("in/de/licence.flac", (REAL / "multilingual_de.flac").read_bytes())
    ((fox, sentence),) = system.upload_samples(["fox.wav"], prefix="in/en/")
    fields = {**ALL_OPTIONS, "vad": not TranscribeOptions().vad_filter}  # not the default, whichever it is
    path = write_manifest(
        tmp_path,
        {"input_uri": german, "output_uri": f"s3://{system.bucket}/out/", "model": "base", "formats": "all", **fields},
        {"input_uri": fox, "output_uri": f"s3://{system.bucket}/out/", "model": "base"},
    )  # fmt: skip
    assert cli("submit", "--manifest", path).exit_code == 0
    one_actor = system.settings.with_(worker={"min_actors": 1, "max_actors": 1},  # both files on one batcher
                                      health={"task_deadline_base_s": 300.0})  # fmt: skip
    summary = system.run(one_actor, timeout=400)
    assert (summary.completed, summary.dead) == (2, 0)
    system.check_invariants()

    out = f"s3://{system.bucket}/out/licence"
    doc = json.loads(system.object_text(f"{out}.json"))
    public = {"vad_filter": "vad"}
    ran = {public.get(k, k): v for k, v in doc["options"].items() if public.get(k, k) in fields}
    assert ran == fields and doc["options"]["formats"] == ["json", "srt", "vtt", "txt", "tsv"]
    assert doc["schema_version"] == 1 and [s["id"] for s in doc["segments"]] == list(range(len(doc["segments"])))
    assert _english(doc["text"]), doc["text"]
    for s in doc["segments"]:
        starts = [w["start"] for w in s["words"]]
        assert s["words"] and starts == sorted(starts), s
        assert all(s["start"] <= w["start"] <= w["end"] <= s["end"] for w in s["words"]), s
    tsv = system.object_text(f"{out}.tsv").splitlines()
    assert tsv[0] == "start\tend\ttext" and len(tsv) == len(doc["segments"]) + 1
    assert [int(x) for x in tsv[1].split("\t")[:2]] == [round(doc["segments"][0]["start"] * 1000),
                                                        round(doc["segments"][0]["end"] * 1000)]  # fmt: skip
    neighbour = json.loads(system.object_text(f"s3://{system.bucket}/out/fox.json"))
    assert neighbour["options"] == TranscribeOptions().to_dict()
    assert all(s["words"] is None for s in neighbour["segments"]) and neighbour["text"].strip()
    shown = json.loads(cli("show", "1", "--json").stdout)
    assert shown["options"] == doc["options"] and shown["status"] == "completed"


def test_a_babbling_transcript_is_suspect_and_retry_suspect_reruns_only_it_with_base(cli, system, tmp_path):
    """Issue 24 part 3 through a real run (Ray, moto over HTTP, tiny.en then base on the CPU): speech
    played backwards makes the model babble; its task is recorded suspect with the reason in the
    database and in its JSON, `status` counts it, `tasks --suspect` lists only it, and `retry --suspect
    --model base` re-transcribes only it into the same outputs, its first verdict kept in its history."""
    from raytranscribe.audio import decode
    from tests.support.media import wav16

    b = system.bucket
    ((clean_uri, _),) = system.upload_samples(["fox.wav"], prefix="in/")
    station = decode(Path(__file__).parent / "fixtures" / "speech" / "en_station.flac").samples
    babble_uri = system.put("in/station_reversed.wav", wav16(tmp_path / "r.wav", station[::-1].copy()).read_bytes())
    whale = Path(__file__).parent / "fixtures" / "real" / "humpback_whale.ogg"  # a real recording, no speech
    whale_uri = system.put("in/whale.ogg", whale.read_bytes())
    clean, babble, song = system.submit([clean_uri, babble_uri, whale_uri])
    assert system.run().completed == 3
    # No invented text (issue 24 part 2) through the whole system with the defaults: nothing written
    # over the whale's song, and nothing to distrust in an empty transcript.
    sung = json.loads(system.object_text(f"s3://{b}/out/whale.json"))
    assert (sung["text"], sung["segments"], sung["quality"]["suspect"]) == ("", [], False), sung
    assert system.store.get(song).suspect is False

    quality = system.store.get(babble).quality
    # Which measures give babble away varies with the windows it shares a batch with: low confidence,
    # or more words than anyone speaks in the time (or both).
    assert system.store.get(babble).suspect is True and {"low-confidence", "speech-rate"} & set(quality["reasons"]), quality
    assert system.store.get(clean).suspect is False, system.store.get(clean).quality
    doc = json.loads(system.object_text(f"s3://{b}/out/station_reversed.json"))
    assert doc["quality"] == quality and doc["model"] == "tiny.en"
    assert json.loads(system.object_text(f"s3://{b}/out/fox.json"))["quality"]["suspect"] is False

    status = cli("status", "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["suspects"] == 1
    assert "suspect transcripts: 1" in cli("status").stdout
    listed = cli("tasks", "--suspect", "--json")
    assert [t["id"] for t in json.loads(listed.stdout)] == [babble]
    assert all(reason in cli("tasks", "--suspect").stdout for reason in quality["reasons"])
    assert cli("retry", "--suspect", "--status", "dead").exit_code == 2
    retried = cli("retry", "--suspect", "--model", "base")
    assert retried.exit_code == 0 and "requeued 1 suspect task(s) with model base" in retried.stdout
    assert json.loads(cli("status", "--json").stdout)["suspects"] == 0

    assert system.run().completed == 1  # only the suspect one ran again
    again = system.store.get(babble)
    assert (again.status, again.model, again.attempt) == (TaskStatus.COMPLETED, "base", 2)
    assert [a.quality["suspect"] for a in again.attempts] == [True, again.suspect]  # history kept, re-judged
    doc = json.loads(system.object_text(f"s3://{b}/out/station_reversed.json"))  # the same stem, overwritten
    assert doc["model"] == "base" and doc["quality"] == again.quality
    assert system.store.get(clean).attempt == 1 and system.store.get(song).attempt == 1
    system.check_invariants()


def test_whisper_option_help_states_the_real_defaults():
    """The help texts spell the defaults out (the command line imports no engine to ask); they must
    say what TranscribeOptions does."""
    from raytranscribe import cli as cli_module
    from raytranscribe.engines.base import TranscribeOptions

    d = TranscribeOptions()
    assert cli_module.VAD_HELP.endswith(f"(default: {'on' if d.vad_filter else 'off'}).")
    assert cli_module.WORD_TIMESTAMPS_HELP.endswith(f"(default: {'on' if d.word_timestamps else 'off'}).")
    assert cli_module.TASK_HELP.endswith(f"(default: {d.task}).")
    assert cli_module.BEAM_SIZE_HELP.endswith(f"(default: {d.beam_size}).")
    assert cli_module.TEMPERATURE_HELP.endswith(f"(default: {d.temperature:g}).")
