"""One tree of errors under :class:`RayTranscribeError`.

Every class says whether it is *transient* (retry with backoff) or *permanent* (the task goes
straight to ``dead``) and which pipeline *stage* it belongs to. Raise them with ``raise X(...) from
exc`` so the original stays in ``__cause__``.

Errors cross the Ray boundary as :class:`Failure` records (plain data), not as live exceptions:
a worker turns whatever it caught into a ``Failure`` and the orchestrator records it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar


class Stage(str, enum.Enum):
    """Where in a task's life a failure happened. Stored as text in ``task_attempts.stage``."""

    FETCH = "fetch"  # claiming the task from the database
    PRESIGN = "presign"  # driver-side URL signing
    DISPATCH = "dispatch"  # handing the task to an actor
    DOWNLOAD = "download"
    DECODE = "decode"
    MODEL_LOAD = "model-load"
    TRANSCRIBE = "transcribe"
    RENDER = "render"
    UPLOAD = "upload"
    LEASE = "lease"  # the lease expired: the holder vanished
    WORKER_DEATH = "worker-death"  # the actor or its node died mid-task
    TIMEOUT = "timeout"  # the task ran past its deadline (hung actor)
    STORE = "store"  # recording the outcome
    SHUTDOWN = "shutdown"  # released by a stopping orchestrator

    def __str__(self) -> str:  # "download", not "Stage.DOWNLOAD", in messages and logs
        return self.value


class RayTranscribeError(Exception):
    """Root of every error this package raises on purpose."""

    transient: ClassVar[bool] = False
    stage: ClassVar[Stage | None] = None

    def __init__(
        self,
        message: str,
        *,
        stage: Stage | None = None,
        http_status: int | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        # Instance overrides: a class sets the usual answer, a raise site may know better
        # (a PresignError is permanent for bad parameters, transient for missing credentials).
        if stage is not None:
            self.stage = stage  # type: ignore[misc]
        if transient is not None:
            self.transient = transient  # type: ignore[misc]

    def __reduce__(self):  # keep keyword state when pickled across Ray
        return (_rebuild, (type(self), self.message, self.stage, self.http_status, self.transient))


def _rebuild(cls, message, stage, http_status, transient):
    obj = cls.__new__(cls)
    RayTranscribeError.__init__(obj, message, stage=stage, http_status=http_status, transient=transient)
    return obj


class TransientError(RayTranscribeError):
    transient = True


class PermanentError(RayTranscribeError):
    transient = False


# --- configuration and input -------------------------------------------------------------------


class ConfigError(PermanentError):
    """A setting is missing or invalid."""


class InvalidInput(PermanentError):
    """Something a user handed us (URI, manifest line, option) is not acceptable."""


class InvalidURI(InvalidInput):
    pass


class ManifestError(InvalidInput):
    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


# --- the store ---------------------------------------------------------------------------------


class StoreError(RayTranscribeError):
    stage = Stage.STORE


class StoreUnavailable(StoreError):
    """The database could not be reached after bounded retries."""

    transient = True


class StoreMisconfigured(StoreError):
    """The database refused us for a reason no retry changes: bad credentials, an unknown role or
    database, a bad connection option (``sslmode``), a missing privilege. Permanent."""

    transient = False


class SchemaOutOfDate(StoreMisconfigured):
    """The database has no raytranscribe schema, or an older one: ``raytranscribe db upgrade``."""


class IllegalTransition(StoreError):
    """The database refused a status change (the trigger said no)."""


class TaskNotFound(StoreError):
    pass


# --- S3, presigning and transfers --------------------------------------------------------------


class PresignError(RayTranscribeError):
    stage = Stage.PRESIGN


class StorageError(TransientError):
    """A driver-side S3 call (listing, head, bucket creation) failed."""

    stage = Stage.PRESIGN


class TransferError(RayTranscribeError):
    """An HTTP transfer on a presigned URL failed."""

    stage = Stage.DOWNLOAD


class InputMissing(TransferError):
    """404 on the input: there is nothing to retry."""

    transient = False


class AccessDenied(TransferError):
    """403: bad or expired signature. Transient: the retry is signed afresh."""

    transient = True


class ServerError(TransferError):
    """5xx or 429 from the store."""

    transient = True


class TransferTimeout(TransferError):
    transient = True


class ConnectionLost(TransferError):
    transient = True


class TruncatedBody(TransferError):
    transient = True


class UnexpectedStatus(TransferError):
    """Any other non-2xx answer."""

    transient = False


class TooLarge(TransferError):
    transient = False


class UploadCorrupted(TransferError):
    """The ETag S3 returned does not match the MD5 of what we sent."""

    transient = True
    stage = Stage.UPLOAD


# --- audio and engines -------------------------------------------------------------------------


class AudioDecodeError(PermanentError):
    """Not audio, corrupt, empty, or without an audio stream."""

    stage = Stage.DECODE


class EngineError(RayTranscribeError):
    stage = Stage.TRANSCRIBE


class ModelLoadError(EngineError):
    """The model cannot be found or loaded. Permanent: restarting will not make it appear."""

    transient = False
    stage = Stage.MODEL_LOAD


class ModelNotFound(ModelLoadError, InvalidInput):
    """A model URI names no loadable model (no such bucket, a required file missing): the user's typo,
    refused at submit time (exit 2) and a permanent start-up failure if it gets that far."""


class ModelDownloadError(ModelLoadError):
    """A model's files could not be fetched or failed verification on the node (HTTP status, size or
    MD5 mismatch). Permanent for this actor: its start-up fails with the cause; the pool's replacement
    (bounded by ``health.max_start_failures``) is the retry."""


class TranscriptionError(EngineError):
    """The engine crashed on this input. Transient (OOM, a flaky device), but bounded by max_retries."""

    transient = True


class EngineOutOfMemory(TranscriptionError):
    """The device ran out of memory on a batch: the batch was too big, not its inputs bad. Transient."""


# --- the cluster -------------------------------------------------------------------------------


class WorkerDied(TransientError):
    """The actor (or its node) died while it held the task."""

    stage = Stage.WORKER_DEATH


class ActorUnavailable(WorkerDied):
    """The actor stopped answering mid-call; the call may or may not have run."""


class TaskTimedOut(TransientError):
    """The task ran past its deadline; the actor was presumed hung and killed."""

    stage = Stage.TIMEOUT


class LeaseExpired(TransientError):
    stage = Stage.LEASE


class DispatchError(TransientError):
    stage = Stage.DISPATCH


def is_transient(error: BaseException | Failure) -> bool:
    """Transient unless the error says otherwise; unknown exceptions count as transient (retries stay bounded)."""
    if isinstance(error, (RayTranscribeError, Failure)):
        return bool(error.transient)
    return True


@dataclass(frozen=True)
class Failure:
    """An error as data: what a worker reports and what the store records per attempt."""

    stage: Stage
    error_class: str
    message: str
    transient: bool
    http_status: int | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, stage: Stage | None = None) -> Failure:
        own_stage = getattr(exc, "stage", None)
        resolved = own_stage if isinstance(own_stage, Stage) else stage
        if stage is not None and not isinstance(exc, RayTranscribeError):
            resolved = stage
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, RayTranscribeError):
            message = f"{type(exc).__name__}: {message}"
        return cls(
            stage=resolved or Stage.TRANSCRIBE,
            error_class=type(exc).__name__,
            message=message,
            transient=is_transient(exc),
            http_status=getattr(exc, "http_status", None),
        )

    @property
    def reason(self) -> str:
        """The human sentence stored in ``failure_reason``: stage first, then what went wrong."""
        return f"{self.stage.value}: {self.message}"
