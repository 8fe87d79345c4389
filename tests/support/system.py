"""The whole system for end-to-end tests: real Postgres, real S3 over HTTP (moto, or the fault
server where a test needs S3 to misbehave), real Ray with logical GPUs, and the real tiny.en model.

``System`` uploads speech, submits tasks, runs an orchestrator until drained (in a thread, with a
watchdog so a bug fails the test instead of hanging it), and checks the invariants every scenario
must keep.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, text

from raytranscribe.config import (
    EngineSettings,
    HealthSettings,
    LeaseSettings,
    RetrySettings,
    S3Settings,
    Settings,
    StoreSettings,
    TransferSettings,
    WorkerSettings,
)
from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.orchestrator import Orchestrator, RunOptions, RunSummary
from raytranscribe.storage import S3Storage
from raytranscribe.uris import output_uri
from raytranscribe.store import NewTask, Store, TaskStatus
from raytranscribe import samples

FAULTY_ENGINE = "tests.support.faulty_engine:FaultyEngine"


def system_settings(database_url: str, s3: S3Settings, **groups) -> Settings:
    """Settings scaled for tests: short leases, quick retries, 2 actors on logical GPUs, 1 thread each."""
    base = Settings(
        database_url=database_url,
        s3=s3,
        retry=RetrySettings(max_retries=2, base_delay_s=0.2, backoff_factor=2.0, max_delay_s=1.0),
        lease=LeaseSettings(lease_s=20.0, heartbeat_s=0.5),
        store=StoreSettings(op_retries=4, op_retry_base_s=0.05),
        transfer=TransferSettings(connect_timeout_s=2.0, read_timeout_s=2.0),
        # Logical GPUs: reserved, never usable, so the device is cpu by choice (auto would refuse to start).
        engine=EngineSettings(cpu_threads=1, device="cpu"),
        worker=WorkerSettings(min_actors=2, max_actors=2, num_gpus=1, num_cpus=1, prefetch=2),
        health=HealthSettings(ping_interval_s=0.5, ping_timeout_s=5.0, task_deadline_base_s=60.0),
        namespace=f"rt-test-{uuid.uuid4().hex[:6]}",
    )
    return base.with_(**groups) if groups else base


@dataclass
class System:
    settings: Settings
    store: Store
    bucket: str
    s3_client: object
    database_url: str
    runs: list[RunSummary] = field(default_factory=list)
    fault_server: object | None = None  # when set, S3 is the fault server, not moto
    _started: list[tuple[Orchestrator, threading.Thread]] = field(default_factory=list, repr=False)

    def use_fault_server(self, fault_server, **groups) -> Settings:
        """Settings whose presigned URLs point at the fault server, which then holds inputs and outputs."""
        self.fault_server = fault_server
        return self.settings.with_(s3={"endpoint_url": fault_server.url("/").rstrip("/")}, **groups)

    @property
    def storage(self) -> S3Storage:
        return S3Storage(self.settings.s3)

    def upload_samples(self, names: Sequence[str] | None = None, prefix: str = "in/") -> list[tuple[str, str]]:
        """Upload speech samples; returns (input URI, expected sentence) pairs."""
        out = []
        for path in samples.sample_paths():
            if names is not None and path.name not in names:
                continue
            key = f"{prefix}{path.name}"
            self.s3_client.upload_file(str(path), self.bucket, key)
            out.append((f"s3://{self.bucket}/{key}", samples.expected_text(path.name)))
        return out

    def put(self, key: str, body: bytes) -> str:
        self.s3_client.put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"

    def submit(self, uris: Sequence[str], *, engine: str = "faster-whisper", options: TranscribeOptions | None = None,
               max_retries: int | None = None) -> list[int]:
        tasks = []
        for uri in uris:
            stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            tasks.append(
                NewTask(
                    input_uri=uri,
                    output_uri=f"s3://{self.bucket}/out/{stem}",
                    engine=engine,
                    model="tiny.en",
                    options=options or TranscribeOptions(),
                    max_retries=max_retries,
                )
            )
        report = self.store.submit(tasks)
        assert len(report.inserted) == len(tasks), report
        return list(report.inserted)

    def orchestrator(self, settings: Settings | None = None, options: RunOptions | None = None) -> Orchestrator:
        return Orchestrator(
            settings or self.settings,
            self.store,
            S3Storage((settings or self.settings).s3),
            options=options or RunOptions(until_drained=True, idle_poll_s=0.2, grace_s=10),
        )

    def run(self, settings: Settings | None = None, options: RunOptions | None = None, *, timeout: float = 180,
            during=None) -> RunSummary:
        """Run one orchestrator until drained. ``during(orch)`` runs in another thread meanwhile."""
        orch = self.orchestrator(settings, options)
        return self.run_orchestrators([orch], timeout=timeout, during=during)[0]

    def run_orchestrators(self, orchs: Sequence[Orchestrator], *, timeout: float = 180, during=None) -> list[RunSummary]:
        """Run ``orchs`` in threads until each returns; ``during(orchs[0])`` runs in another thread
        meanwhile, and whatever it raises fails the test (after the orchestrators' own errors)."""
        results: list[RunSummary | BaseException | None] = [None] * len(orchs)
        helper_error: list[BaseException] = []

        def go(i: int) -> None:
            try:
                results[i] = orchs[i].run()
            except BaseException as exc:  # surfaced below
                results[i] = exc

        def helping() -> None:
            try:
                during(orchs[0])
            except BaseException as exc:  # surfaced below: an assertion in a thread must fail the test
                helper_error.append(exc)

        threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(len(orchs))]
        self._started.extend(zip(orchs, threads))
        for t in threads:
            t.start()
        helper = None
        if during is not None:
            helper = threading.Thread(target=helping, daemon=True)
            helper.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            self.stop_orchestrators()
            why = f"; `during` raised {helper_error[0]!r}" if helper_error else ""
            pytest.fail(f"orchestrator did not drain within {timeout}s{why}; statuses: {self.statuses()}")
        if helper is not None:
            helper.join(30)
            assert not helper.is_alive(), "`during` did not return within 30 s of the run's end"
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if helper_error:
            raise helper_error[0]
        self.runs.extend(results)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def stop_orchestrators(self, join_s: float = 30.0) -> None:
        """Ask every orchestrator this System started to stop, and wait (bounded) for their threads:
        a test that failed or timed out must not leave one claiming work in the next test."""
        for orch, _ in self._started:
            orch.request_stop()
        deadline = time.monotonic() + join_s
        for _, thread in self._started:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._started = [(o, t) for o, t in self._started if t.is_alive()]

    # --- reading the truth back ------------------------------------------------------------------

    def sql(self, query: str, **params):
        engine = create_engine(self.database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
        try:
            with engine.connect() as conn:
                return conn.execute(text(query), params).fetchall()
        finally:
            engine.dispose()

    def statuses(self) -> dict[int, str]:
        return {r.id: r.status.value for r in self.store.list_tasks(limit=100_000)}

    def object_text(self, uri: str) -> str:
        bucket, key = uri[len("s3://"):].split("/", 1)
        if self.fault_server is not None:
            stored = self.fault_server.get_object(f"/{bucket}/{key}")
            assert stored is not None, f"{uri} was never uploaded"
            return stored.body.decode("utf-8")
        return self.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")

    def _check_outputs(self, view) -> None:
        """Every output of a completed task was uploaded and holds its transcript. A transcript with no
        words (silence) legitimately gives an empty txt and srt; json and vtt are never empty."""
        spoken = bool(view.text_preview)  # the transcript's first characters, stored when it completed
        for fmt in view.options.formats:
            uri = str(output_uri(view.output_uri, fmt))
            body = self.object_text(uri)
            if fmt == "json":
                assert bool(json.loads(body)["text"].strip()) == spoken, (uri, view.text_preview, body[:500])
            elif fmt == "vtt":
                assert body.startswith("WEBVTT"), (uri, body[:500])
                assert ("-->" in body) == spoken, (uri, view.text_preview, body[:500])
            elif fmt == "srt":
                assert body.startswith("1\n") if spoken else body == "", (uri, view.text_preview, body[:500])
            elif fmt == "txt":
                assert bool(body.strip()) == spoken, (uri, view.text_preview, body[:500])

    def check_invariants(self) -> None:
        """What must hold after every scenario (issue 6)."""
        tasks = self.store.list_tasks(limit=100_000)
        assert tasks, "no tasks"
        for t in tasks:
            assert t.status in (TaskStatus.COMPLETED, TaskStatus.DEAD, TaskStatus.CANCELLED), (t.id, t.status)
            assert t.retries <= t.max_retries, (t.id, t.retries, t.max_retries)
            view = self.store.get(t.id)
            completed_attempts = [a for a in view.attempts if a.outcome == "completed"]
            if t.status is TaskStatus.COMPLETED:
                # Completed once, or also before with a transcript judged suspect and re-run (retry --suspect).
                assert completed_attempts and completed_attempts[-1] == view.attempts[-1], (t.id, view.attempts)
                assert all((a.quality or {}).get("suspect") for a in completed_attempts[:-1]), (t.id, view.attempts)
                self._check_outputs(view)
            else:
                assert not completed_attempts, (t.id, view.attempts)
            if t.status is TaskStatus.DEAD:
                assert t.failure_reason, t.id
                stage = t.failure_reason.split(":", 1)[0]
                assert stage in {s.stage for s in view.attempts if s.stage}, (t.failure_reason, view.attempts)


@pytest.fixture
def system(database_url, store, make_store, s3_settings, s3_client, bucket, ray_session):
    # `store` empties the tables; the system's own store uses the system's retry policy.
    settings = system_settings(database_url, s3_settings)
    system = System(settings=settings, store=make_store(settings), bucket=bucket, s3_client=s3_client,
                    database_url=database_url)
    yield system
    # A test that failed (or hit its timeout) mid-run leaves its orchestrators running: stop them here.
    system.stop_orchestrators()
    assert not system._started, f"orchestrator threads still running after teardown: {system._started}"
