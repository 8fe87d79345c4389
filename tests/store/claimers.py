"""Claim loops run in other processes by the concurrency tests (importable by spawned children)."""

from __future__ import annotations

from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.store import Store
from tests.support.db import TEST_SETTINGS


def claim_until_empty(url: str, owner: str, batch: int, barrier) -> list[tuple[int, int]]:
    """Claim and complete until nothing is left; return every (task id, attempt) this owner claimed."""
    store = Store(url, settings=TEST_SETTINGS, application_name=owner)
    got: list[tuple[int, int]] = []
    try:
        barrier.wait(60)  # start together, or the first starter takes everything
        while True:
            claimed = store.claim(batch, owner, lease_s=120)
            if not claimed:
                return got
            got += [(c.id, c.attempt) for c in claimed]
            store.record([Outcome(c.id, c.attempt, result=TaskResult(1.0, "en", ())) for c in claimed])
    finally:
        store.close()


def process_main(url: str, owner: str, batch: int, barrier, queue) -> None:
    try:
        queue.put((owner, claim_until_empty(url, owner, batch, barrier)))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put((owner, repr(exc)))
