"""The error tree: one root, transient or permanent, a stage, and Failure records that cross Ray."""

from __future__ import annotations

import pickle

import pytest

from raytranscribe import errors as E
from raytranscribe.errors import Failure, Stage


def test_every_error_the_module_defines_descends_from_the_root_and_is_transient_or_permanent():
    classes = [c for c in vars(E).values()
               if isinstance(c, type) and issubclass(c, BaseException) and c.__module__ == E.__name__]  # fmt: skip
    assert len(classes) > 25
    assert [c.__name__ for c in classes if not issubclass(c, E.RayTranscribeError)] == []
    assert all(isinstance(c.transient, bool) and isinstance(c.stage, Stage | None) for c in classes)


@pytest.mark.parametrize(
    ("cls", "transient", "stage"),
    [
        (E.InputMissing, False, Stage.DOWNLOAD),
        (E.AccessDenied, True, Stage.DOWNLOAD),
        (E.ServerError, True, Stage.DOWNLOAD),
        (E.UploadCorrupted, True, Stage.UPLOAD),
        (E.AudioDecodeError, False, Stage.DECODE),
        (E.ModelLoadError, False, Stage.MODEL_LOAD),
        (E.TranscriptionError, True, Stage.TRANSCRIBE),
        (E.WorkerDied, True, Stage.WORKER_DEATH),
        (E.LeaseExpired, True, Stage.LEASE),
        (E.StoreUnavailable, True, Stage.STORE),
        (E.IllegalTransition, False, Stage.STORE),
        (E.InvalidURI, False, None),
    ],
)
def test_classes_say_transient_and_stage(cls, transient, stage):
    err = cls("msg")
    assert (err.transient, err.stage, E.is_transient(err)) == (transient, stage, transient)


def test_instance_overrides_and_pickling_keep_state():
    err = E.PresignError("no credentials", transient=True, http_status=None)
    assert err.transient is True and E.PresignError.transient is False
    copy = pickle.loads(pickle.dumps(E.ServerError("503 from S3", http_status=503, stage=Stage.UPLOAD)))
    assert (type(copy), copy.message, copy.http_status, copy.stage, copy.transient) == (
        E.ServerError, "503 from S3", 503, Stage.UPLOAD, True)  # fmt: skip


def test_manifest_error_names_the_line():
    assert str(E.ManifestError("bad JSON", line=7)) == "line 7: bad JSON"
    assert E.ManifestError("bad JSON", line=7).line == 7
    assert str(E.ManifestError("empty")) == "empty"


def test_failure_from_our_exception():
    f = Failure.from_exception(E.InputMissing("404 Not Found: s3://b/k", http_status=404))
    assert f == Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found: s3://b/k", False, 404)
    assert f.reason == "download: 404 Not Found: s3://b/k"


def test_failure_from_foreign_exception_uses_given_stage():
    f = Failure.from_exception(MemoryError("CUDA out of memory"), Stage.TRANSCRIBE)
    assert (f.stage, f.error_class, f.message, f.transient) == (
        Stage.TRANSCRIBE, "MemoryError", "MemoryError: CUDA out of memory", True)  # fmt: skip
    assert str(Stage.WORKER_DEATH) == "worker-death"
