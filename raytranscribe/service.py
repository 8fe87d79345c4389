"""The functions the CLI and the ``jobs/`` entrypoints share: connect Ray, build the pieces, run."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from raytranscribe.config import Settings
from raytranscribe.isolation import scrubbed_environ
from raytranscribe.orchestrator import Observer, Orchestrator, RunOptions, RunSummary
from raytranscribe.storage import S3Storage
from raytranscribe.store import Store
from raytranscribe.store.url import resolve_database_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRay:
    """Resources of a Ray started here when no cluster address is given."""

    num_cpus: int | None = None
    num_gpus: float | None = None  # None: Ray detects real GPUs


def connect_ray(settings: Settings, local: LocalRay = LocalRay()) -> bool:
    """Join ``settings.ray_address`` (or ``RAY_ADDRESS``, as set inside ``ray job submit``), else start
    a local Ray. Returns True when this call started Ray (and so should shut it down)."""
    import os

    import ray

    if ray.is_initialized():
        return False
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=settings.namespace, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
    else:
        # The raylet inherits this process's environment and hands it to every worker it spawns:
        # start it without the driver's secrets (they come back for the driver's own use after).
        with scrubbed_environ() as withheld:
            ray.init(
                namespace=settings.namespace,
                num_cpus=local.num_cpus,
                num_gpus=local.num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        log.info("started a local Ray: %s", ray.cluster_resources())
        if withheld:
            log.info("withheld from the local Ray's workers: %s", ", ".join(withheld))
    return True


@contextmanager
def stop_on_signals(orchestrator: Orchestrator) -> Iterator[None]:
    """SIGTERM/SIGINT ask the orchestrator to stop: it hands back what is in flight, uncharged, within
    about a second (``--grace`` lets that work finish first); a second signal is the user insisting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    hits = {"n": 0}

    def handler(signum, frame):
        hits["n"] += 1
        if hits["n"] > 1:
            raise KeyboardInterrupt
        grace = orchestrator.options.grace_s
        log.warning(
            "received %s: stopping; %s", signal.Signals(signum).name,
            f"in-flight work may finish for {grace:g}s, the rest goes back to pending" if grace
            else "in-flight work goes back to pending, uncharged",
        )  # fmt: skip
        orchestrator.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run(
    settings: Settings,
    options: RunOptions,
    *,
    store: Store | None = None,
    storage: S3Storage | None = None,
    observer: Observer | None = None,
    local: LocalRay = LocalRay(),
) -> RunSummary:
    """Connect Ray, run one orchestrator until drained or stopped, and return its summary."""
    own_store = store is None
    settings = resolve_database_url(settings)  # RAYTRANSCRIBE_DATABASE_URL_FILE, noted as a secret
    store = store or Store.from_settings(settings)
    try:  # a database we cannot use fails the run here, before Ray starts (not "claiming paused" forever)
        store.check_ready()
    except Exception:
        if own_store:
            store.close()
        raise
    storage = storage or S3Storage(settings.s3)
    started_ray = connect_ray(settings, local)
    orchestrator = Orchestrator(settings, store, storage, options=options, observer=observer)
    try:
        with stop_on_signals(orchestrator):
            return orchestrator.run()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if own_store:
            store.close()
