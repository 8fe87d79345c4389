"""`raytranscribe demo` as a new user runs it: a subprocess with no database URL, no S3 endpoint and no
Ray address, on a fresh data directory; then again on the same one. Checked on its output, its exit
code, the files it leaves, and the embedded database it leaves behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from raytranscribe import samples
from raytranscribe.demo import CORRUPT_BODY, FaultyProxy, normalize_text, word_error_rate
from raytranscribe.local import embedded_postgres_url, server_answers
from tests.support.speech import wer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_NAMES = [p.name for p in samples.sample_paths()]


def _demo_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYTRANSCRIBE_")}
    env.pop("RAY_ADDRESS", None)  # never the test session's Ray: the demo starts its own
    env["RAYTRANSCRIBE_DATA_DIR"] = str(data_dir)
    return env


def _run_demo(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raytranscribe.cli", "demo", *args],
        cwd=ROOT,
        env=_demo_env(data_dir),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _flat(text: str) -> str:
    """Console output with line wrapping undone (rich wraps long lines at spaces)."""
    return " ".join(text.split())


def _ray_processes(session_dir: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if session_dir in " ".join(p.info["cmdline"] or ()):
                found.append(" ".join(p.info["cmdline"])[:200])
        except psutil.Error:
            pass
    return found


def _check_run(proc: subprocess.CompletedProcess, data_dir: Path) -> tuple[str, str]:
    """Everything one run must show; returns (run id, flattened stdout)."""
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    flat = _flat(out)
    run_id = re.search(r"raytranscribe demo, run (\d{8}-\d{6}-[0-9a-f]{4})", out).group(1)

    # Every transcript next to its sentence: one table row per sample, with the sentence and a ✓.
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") >= 7}
    for name in SAMPLE_NAMES + ["flaky-fox.wav"]:
        expected = samples.expected_text(name.removeprefix("flaky-"))
        assert expected in rows[name], rows.get(name)
        assert "completed" in rows[name] and "✓" in rows[name], rows[name]
    assert "dead" in rows["corrupt.wav"] and "(not audio)" in rows["corrupt.wav"]

    # The two failure stories, with their reasons.
    assert re.search(r"permanent failure: task \d+ corrupt\.wav is dead after 1 attempt\(s\), not retried: "
                     r"decode: not an audio file", flat), flat  # fmt: skip
    assert "transient failure: task" in flat and "flaky-fox.wav is completed after 1 retry" in flat
    assert ("attempt 1 failed at download: ServerError: Failed to download from S3: 503 Service Unavailable "
            "(ServiceUnavailable)") in flat  # fmt: skip
    assert "(HTTP 503); transient error, retry 1 of 3 attempt 2 completed" in flat

    # Where the outputs are, in S3 and on disk; the `status` summary; the verdict.
    assert f"outputs s3://raytranscribe-demo/demo/{run_id}/out/ (json, srt, vtt, txt per input)" in flat
    local = data_dir / "demo-output" / run_id
    assert f"local {local}" in flat
    assert "raytranscribe status" in out and "orchestrators: none running" in out
    assert "demo OK: 7 of 7 speech file(s) completed, corrupt.wav dead with its reason" in flat

    # The copied outputs are the real transcripts.
    for name in SAMPLE_NAMES + ["flaky-fox.wav"]:
        stem = name.rsplit(".", 1)[0]
        assert sorted(p.name for p in local.glob(f"{stem}.*")) == [f"{stem}.{f}" for f in ("json", "srt", "txt", "vtt")]
        text = (local / f"{stem}.txt").read_text()
        assert wer(samples.expected_text(name.removeprefix("flaky-")), text) <= 0.25, (name, text)
        assert (local / f"{stem}.vtt").read_text().startswith("WEBVTT")
    assert not list(local.glob("corrupt.*"))

    # Nothing left running but the embedded database: not the local S3, not the proxy, not Ray.
    for port in re.findall(r"http://127\.0\.0\.1:(\d+)", out):
        assert not server_answers("127.0.0.1", int(port)), f"port {port} still answers"
    session = re.search(r"worker logs in (/\S+?)/logs", flat).group(1)
    assert _ray_processes(session) == []
    return run_id, flat


def _db_rows(data_dir: Path):
    engine = sa.create_engine(embedded_postgres_url(data_dir))
    try:
        with engine.connect() as conn:
            tasks = conn.execute(
                sa.text("SELECT id, input_uri, status::text AS status, attempt, retries, max_retries, "
                        "failure_reason, text_preview FROM tasks ORDER BY id")  # fmt: skip
            ).all()
            attempts = conn.execute(
                sa.text("SELECT task_id, attempt, outcome::text AS outcome, stage, error_class, http_status "
                        "FROM task_attempts ORDER BY task_id, attempt")  # fmt: skip
            ).all()
        return tasks, attempts
    finally:
        engine.dispose()


def _check_database(data_dir: Path, run_id: str) -> None:
    tasks, attempts = _db_rows(data_dir)
    prefix = f"s3://raytranscribe-demo/demo/{run_id}/in/"
    mine = {t.input_uri[len(prefix):]: t for t in tasks if t.input_uri.startswith(prefix)}
    assert sorted(mine) == sorted(SAMPLE_NAMES + ["flaky-fox.wav", "corrupt.wav"])
    by_task: dict[int, list] = {}
    for a in attempts:
        by_task.setdefault(a.task_id, []).append(a)
    for name in SAMPLE_NAMES:
        t = mine[name]
        assert (t.status, t.attempt, t.retries, t.failure_reason) == ("completed", 1, 0, None), t
        assert [(a.attempt, a.outcome) for a in by_task[t.id]] == [(1, "completed")]
        assert wer(samples.expected_text(name), t.text_preview) <= 0.25, (name, t.text_preview)
    flaky = mine["flaky-fox.wav"]
    assert (flaky.status, flaky.attempt, flaky.retries, flaky.max_retries) == ("completed", 2, 1, 3)
    assert [(a.attempt, a.outcome, a.stage, a.error_class, a.http_status) for a in by_task[flaky.id]] == [
        (1, "failed", "download", "ServerError", 503),
        (2, "completed", None, None, None),
    ]
    corrupt = mine["corrupt.wav"]
    assert (corrupt.status, corrupt.attempt, corrupt.retries) == ("dead", 1, 0)
    assert corrupt.failure_reason.startswith("decode: not an audio file")
    assert corrupt.failure_reason.endswith("(permanent error)")
    assert [(a.outcome, a.stage, a.error_class) for a in by_task[corrupt.id]] == [("dead", "decode", "AudioDecodeError")]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_demo_runs_on_embedded_defaults_twice(tmp_path):
    data_dir = tmp_path / "data"
    try:
        first = _run_demo(data_dir)
        run1, _ = _check_run(first, data_dir)
        _check_database(data_dir, run1)

        # A second run on the same data directory reuses the database and submits its own tasks.
        second = _run_demo(data_dir)
        run2, flat2 = _check_run(second, data_dir)
        assert run2 != run1
        _check_database(data_dir, run2)
        _check_database(data_dir, run1)  # the first run's history is untouched
        tasks, _ = _db_rows(data_dir)
        assert [t.status for t in tasks].count("completed") == 14 and [t.status for t in tasks].count("dead") == 2
        assert "│ completed   │    14 │" in second.stdout and "│ dead        │     2 │" in second.stdout
    finally:
        stop = _run_demo(data_dir, "--stop-database")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == f"stopped the embedded PostgreSQL server in {data_dir}"
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


def test_stop_database_without_one_says_so(tmp_path):
    proc = _run_demo(tmp_path / "empty", "--stop-database")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"no embedded PostgreSQL server running in {tmp_path / 'empty'}"


# --- the demo's pieces, on their own --------------------------------------------------------------


class _Origin(BaseHTTPRequestHandler):
    """A stand-in upstream that echoes what reached it."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = f"{self.command} {self.path} host={self.headers['Host']}".encode()
        if self.command == "PUT":
            body += b" body=" + self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET


@pytest.fixture
def origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fetch(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_faulty_proxy_fails_only_the_first_get_of_the_chosen_key(origin):
    with FaultyProxy(origin, {"/bucket/in/flaky a.wav": 1}) as proxy:
        port = proxy.endpoint_url.rsplit(":", 1)[1]
        status, body, _ = _fetch(proxy.endpoint_url + "/bucket/in/flaky%20a.wav?X-Amz-Signature=s")
        assert status == 503
        assert b"<Code>ServiceUnavailable</Code>" in body
        # The second GET is forwarded, path, query and Host header unchanged.
        status, body, headers = _fetch(proxy.endpoint_url + "/bucket/in/flaky%20a.wav?X-Amz-Signature=s")
        assert (status, body) == (200, f"GET /bucket/in/flaky%20a.wav?X-Amz-Signature=s host=127.0.0.1:{port}".encode())
        assert headers["ETag"] == '"abc"'
        # Other keys and other methods are never failed.
        assert _fetch(proxy.endpoint_url + "/bucket/in/other.wav")[0] == 200
        status, body, _ = _fetch(proxy.endpoint_url + "/bucket/out/flaky%20a.txt", "PUT", b"hello")
        assert (status, body) == (200, b"PUT /bucket/out/flaky%20a.txt host=127.0.0.1:" + port.encode() + b" body=hello")
        assert proxy.injected == [("GET", "/bucket/in/flaky a.wav")]
    assert not server_answers("127.0.0.1", int(port))


def test_faulty_proxy_answers_502_when_the_upstream_is_down():
    with FaultyProxy("http://127.0.0.1:9", {}) as proxy:  # port 9 (discard): nothing listens here
        status, _, _ = _fetch(proxy.endpoint_url + "/bucket/key.wav")
    assert status == 502


def test_faulty_proxy_refuses_https_upstreams():
    from raytranscribe.errors import ConfigError

    with pytest.raises(ConfigError, match="forwards plain HTTP only, got upstream 'https://s3.amazonaws.com'"):
        FaultyProxy("https://s3.amazonaws.com", {})


def test_word_error_rate_matches_jiwer_on_whisper_normalised_text():
    pairs = [
        ("The quick brown fox jumps over the lazy dog.", "The quick brown fox jump over the lazy dog."),
        ("Please call the doctor before noon tomorrow.", "please call doctor before noon, tomorrow!"),
        ("We walked along the river.", "We walked along the river and watched the boats."),
        ("Turn off the lights.", ""),
        ("I have 3 cats.", "I have three cats"),
    ]
    got = [round(word_error_rate(r, h), 4) for r, h in pairs]
    assert got == [round(wer(r, h), 4) for r, h in pairs]
    assert got == [0.1111, 0.1429, 0.8, 1.0, 0.0]
    assert normalize_text("Don't stop, 2 go!") == "dont stop two go"
    assert word_error_rate("", "") == 0.0


def test_corrupt_body_is_not_audio():
    from raytranscribe.audio import decode_bytes
    from raytranscribe.errors import AudioDecodeError

    with pytest.raises(AudioDecodeError, match="not an audio file"):
        decode_bytes(CORRUPT_BODY, name_hint="corrupt.wav")
