"""Actor pools: one per (engine, model); each owns its worker actors and every attempt in flight on them.

The driver's face is :class:`ActorPools`: once a turn it hands over what it claimed and gets back
one :class:`TurnReport` (:mod:`~raytranscribe.pool.pools`). Inside, along Ray Data's seams:

- :mod:`~raytranscribe.pool.ledger`: every attempt in flight, by lease (:class:`Attempt`);
- :mod:`~raytranscribe.pool.policy`: the scaling policy, pure (grow while work waits, shrink when idle);
- :mod:`~raytranscribe.pool.actor`: an actor as its pool sees it, its states, its view for ``status``;
- :mod:`~raytranscribe.pool.health`: the actor's state machine (start-up, pings, quarantine,
  deadlines, a sick actor, a draining node);
- :mod:`~raytranscribe.pool.dispatch`: take calls and result streams;
- :mod:`~raytranscribe.pool.failover`: what a dead actor's attempts become, and who pays;
- :mod:`~raytranscribe.pool.rayinfo`: what Ray says (its error text, its control store's tables);
- :mod:`~raytranscribe.pool.pool`: one pool (:class:`ActorPool`): its actors' start, death and number.

It never writes to the database. An ``s3://`` model reaches an actor as presigned URLs from
``model_source`` (the orchestrator binds :meth:`S3Storage.model_for_actor`; the pools import no
storage), called at each actor start.
"""

from __future__ import annotations

import uuid

from raytranscribe.pool.actor import ActorState, ActorView, DeathKind
from raytranscribe.pool.ledger import Attempt, Lease, PoolKey
from raytranscribe.pool.pool import ActorPool, ModelSource
from raytranscribe.pool.pools import ActorPools, Claim, TurnReport
from raytranscribe.pool.rayinfo import death_cause


def new_owner_tag() -> str:
    return uuid.uuid4().hex[:6]


__all__ = [
    "ActorPool",
    "ActorPools",
    "ActorState",
    "ActorView",
    "Attempt",
    "Claim",
    "DeathKind",
    "Lease",
    "ModelSource",
    "PoolKey",
    "TurnReport",
    "death_cause",
    "new_owner_tag",
]
