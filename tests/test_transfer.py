"""Worker-side transfers on presigned URLs: moto for the happy path, our fault server for every failure."""

from __future__ import annotations

import hashlib
import logging
import os
import socket

import pytest

from raytranscribe.config import TransferSettings
from raytranscribe.errors import (
    AccessDenied,
    ConnectionLost,
    Failure,
    InputMissing,
    ServerError,
    Stage,
    TooLarge,
    TransferError,
    TransferTimeout,
    TruncatedBody,
    UnexpectedStatus,
    UploadCorrupted,
)
from raytranscribe.storage import CONTENT_TYPES
from raytranscribe.transfer import Downloaded, Transfer, redact
from tests.support.faultserver import Fault, s3_error
from tests.support.transfer import downloading

AUDIO = bytes(range(256)) * 40  # 10,240 bytes
PATH = "/bucket/in/talk.mp3"
SECRET = "X-Amz-Signature=0123456789abcdef&X-Amz-Credential=AKIDEXAMPLE"


@pytest.fixture
def transfer():
    t = Transfer(TransferSettings(connect_timeout_s=1.0, read_timeout_s=0.5, chunk_bytes=1024))
    yield t
    t.close()


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "downloads"
    d.mkdir()
    return d


def url(server, path=PATH):
    return server.url(path, SECRET)


def check(err, cls, *, transient, status, stage, message):
    """The four things a failure record carries, and the message exactly."""
    assert type(err) is cls
    assert err.transient is transient
    assert err.http_status == status
    assert err.stage is stage
    assert str(err) == message
    assert "0123456789abcdef" not in str(err) and "AKIDEXAMPLE" not in str(err)


# --- happy path through moto over real HTTP --------------------------------------------------------


def test_presign_download_and_upload_all_formats_through_moto(storage, s3_client, bucket, transfer, dest):
    key = "in/sub folder/réunion.wav"
    s3_client.put_object(Bucket=bucket, Key=key, Body=AUDIO)
    get_url, targets = storage.presign_task(f"s3://{bucket}/{key}", f"s3://{bucket}/out/sub folder/réunion", list(CONTENT_TYPES))

    got = transfer.download(get_url, dest, name_hint="réunion.wav")
    assert got.size == len(AUDIO)
    assert got.path.read_bytes() == AUDIO
    assert got.path.suffix == ".wav"
    assert got.path.parent == dest
    got.path.unlink()

    bodies = {"json": b'{"text": "hi"}', "srt": b"1\n00:00:00,000 --> 00:00:01,000\nhi\n", "vtt": b"WEBVTT\n", "txt": b"hi\n",
              "tsv": b"start\tend\ttext\n0\t1000\thi\n"}
    for target in targets:
        etag = transfer.upload(target.put_url, bodies[target.format], target.content_type)
        assert etag == hashlib.md5(bodies[target.format]).hexdigest()

    assert [t.uri for t in targets] == [f"s3://{bucket}/out/sub folder/réunion.{f}" for f in CONTENT_TYPES]
    for fmt, body in bodies.items():
        obj = s3_client.get_object(Bucket=bucket, Key=f"out/sub folder/réunion.{fmt}")
        assert obj["Body"].read() == body
        assert obj["ContentType"] == CONTENT_TYPES[fmt]
    assert os.listdir(dest) == []


def test_downloading_deletes_the_file_after_the_block_even_on_error(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO, "audio/mpeg")
    with downloading(transfer, url(fault_server), dest, "talk.mp3") as got:
        assert isinstance(got, Downloaded)
        assert (got.size, got.content_type, got.path.suffix) == (len(AUDIO), "audio/mpeg", ".mp3")
        assert got.path.read_bytes() == AUDIO
    assert not got.path.exists()

    with pytest.raises(RuntimeError, match="decoder blew up"):
        with downloading(transfer, url(fault_server), dest, "talk.mp3") as got:
            raise RuntimeError("decoder blew up")
    assert os.listdir(dest) == []


def test_chunked_body_without_content_length_downloads_whole(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, Fault(chunked=True))
    got = transfer.download(url(fault_server), dest, name_hint="talk.mp3")
    assert (got.size, got.path.read_bytes() == AUDIO) == (len(AUDIO), True)


def test_503_then_success_on_the_same_transfer_object(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, Fault(503, body=s3_error("SlowDown", "Please reduce your request rate.")), Fault())
    with pytest.raises(ServerError) as info:
        transfer.download(url(fault_server), dest)
    assert str(info.value) == "Failed to download from S3: 503 Service Unavailable (SlowDown): Please reduce your request rate."
    got = transfer.download(url(fault_server), dest)
    assert got.path.read_bytes() == AUDIO
    assert got.path.name.startswith("input-")
    assert [r.method for r in fault_server.requests_for(PATH)] == ["GET", "GET"]


# --- download: HTTP status classification ------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "cls", "transient", "message"),
    [
        (
            Fault(404, body=s3_error("NoSuchKey", "The specified key does not exist.")),
            InputMissing,
            False,
            "Failed to download from S3: 404 Not Found (NoSuchKey): The specified key does not exist.",
        ),
        (
            Fault(403, body=s3_error("AccessDenied", "Request has expired")),
            AccessDenied,
            True,
            "Failed to download from S3: 403 Forbidden (AccessDenied): Request has expired",
        ),
        (Fault(403), AccessDenied, True, "Failed to download from S3: 403 Forbidden"),
        (
            Fault(500, body=s3_error("InternalError", "We encountered an internal error.")),
            ServerError,
            True,
            "Failed to download from S3: 500 Internal Server Error (InternalError): We encountered an internal error.",
        ),
        (Fault(502), ServerError, True, "Failed to download from S3: 502 Bad Gateway"),
        (Fault(429), ServerError, True, "Failed to download from S3: 429 Too Many Requests"),
        (
            Fault(400, body=s3_error("InvalidArgument", "Invalid range")),
            UnexpectedStatus,
            False,
            "Failed to download from S3: 400 Bad Request (InvalidArgument): Invalid range",
        ),
        (
            Fault(400, body=s3_error("RequestTimeout", "Your socket connection was not read from")),
            TransferTimeout,
            True,
            "Failed to download from S3: 400 Bad Request (RequestTimeout): Your socket connection was not read from",
        ),
        (
            Fault(400, body=s3_error("ExpiredToken", "The provided token has expired.")),
            AccessDenied,
            True,
            "Failed to download from S3: 400 Bad Request (ExpiredToken): The provided token has expired.",
        ),
        (Fault(418), UnexpectedStatus, False, "Failed to download from S3: 418 I'm a Teapot"),
        (Fault(206), None, None, None),  # 2xx other than 200 is success
    ],
    ids=lambda v: getattr(v, "status", None) if isinstance(v, Fault) else None,
)
def test_download_status_classification(fault_server, transfer, dest, fault, cls, transient, message):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, fault)
    if cls is None:
        got = transfer.download(url(fault_server), dest)
        assert got.path.read_bytes() == AUDIO
        return
    with pytest.raises(cls) as info:
        transfer.download(url(fault_server), dest)
    check(info.value, cls, transient=transient, status=fault.status, stage=Stage.DOWNLOAD, message=message)
    assert os.listdir(dest) == []


def test_redirect_is_not_followed_and_is_permanent(fault_server, transfer, dest):
    elsewhere = fault_server.url("/elsewhere")
    fault_server.script(PATH, Fault(301, body=s3_error("PermanentRedirect", "Use the eu-west-1 endpoint."), headers={"Location": elsewhere}))
    with pytest.raises(UnexpectedStatus) as info:
        transfer.download(url(fault_server), dest)
    check(
        info.value,
        UnexpectedStatus,
        transient=False,
        status=301,
        stage=Stage.DOWNLOAD,
        message="Failed to download from S3: 301 Moved Permanently (PermanentRedirect): Use the eu-west-1 endpoint.",
    )
    assert [r.path for r in fault_server.requests] == [PATH]  # the signature never went anywhere else


# --- download: the wire misbehaving ----------------------------------------------------------------


def test_stall_mid_body_is_a_read_timeout(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, Fault(stall_after_bytes=100))
    with pytest.raises(TransferTimeout) as info:
        transfer.download(url(fault_server), dest)
    err = info.value
    base = fault_server.url(PATH)
    assert str(err).startswith(f"Failed to download from S3: read timed out after 0.5 s of silence ({base}, after ")
    assert str(err).endswith(f" of {len(AUDIO)} bytes)")
    check(err, TransferTimeout, transient=True, status=200, stage=Stage.DOWNLOAD, message=str(err))
    assert err.__cause__ is not None
    assert os.listdir(dest) == []


def test_slow_first_byte_is_a_read_timeout(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, Fault(delay_s=2.0))
    with pytest.raises(TransferTimeout) as info:
        transfer.download(url(fault_server), dest)
    check(
        info.value,
        TransferTimeout,
        transient=True,
        status=None,
        stage=Stage.DOWNLOAD,
        message=f"Failed to download from S3: read timed out after 0.5 s of silence ({fault_server.url(PATH)})",
    )
    assert os.listdir(dest) == []


def test_truncated_body_is_transient_and_leaves_no_file(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, Fault(truncate_to=3000))
    with pytest.raises(TruncatedBody) as info:
        transfer.download(url(fault_server), dest, name_hint="talk.mp3")
    check(
        info.value,
        TruncatedBody,
        transient=True,
        status=200,
        stage=Stage.DOWNLOAD,
        message="Failed to download from S3: body ended early, the connection closed mid-transfer "
        f"({fault_server.url(PATH)}, after 3000 of {len(AUDIO)} bytes)",
    )
    assert os.listdir(dest) == []


def test_connection_reset_before_the_answer(fault_server, transfer, dest):
    fault_server.script(PATH, Fault(reset=True))
    with pytest.raises(ConnectionLost) as info:
        transfer.download(url(fault_server), dest)
    check(
        info.value,
        ConnectionLost,
        transient=True,
        status=None,
        stage=Stage.DOWNLOAD,
        message=f"Failed to download from S3: connection reset by peer ({fault_server.url(PATH)})",
    )
    assert os.listdir(dest) == []


def test_connection_reset_mid_body(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, Fault(truncate_to=5000, reset=True))
    with pytest.raises((ConnectionLost, TruncatedBody)) as info:
        transfer.download(url(fault_server), dest)
    err = info.value
    # An RST may arrive before or after the bytes sent ahead of it are read: either way it is transient.
    assert err.transient is True and err.http_status == 200 and err.stage is Stage.DOWNLOAD
    assert str(err).startswith("Failed to download from S3: ")
    assert os.listdir(dest) == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused(transfer, dest):
    port = closed_port()
    with pytest.raises(ConnectionLost) as info:
        transfer.download(f"http://127.0.0.1:{port}/bucket/a.wav?{SECRET}", dest)
    check(
        info.value,
        ConnectionLost,
        transient=True,
        status=None,
        stage=Stage.DOWNLOAD,
        message=f"Failed to download from S3: connection refused (http://127.0.0.1:{port}/bucket/a.wav)",
    )
    assert os.listdir(dest) == []


@pytest.fixture
def unanswering_port():
    """A listening port whose accept queue is full: the kernel drops further SYNs, so connects hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for sock in [*fillers, server]:
        sock.close()


def test_connect_timeout(unanswering_port, dest):
    with Transfer(TransferSettings(connect_timeout_s=0.5)) as impatient:
        with pytest.raises(TransferTimeout) as info:
            impatient.download(f"http://127.0.0.1:{unanswering_port}/bucket/a.wav?{SECRET}", dest)
    check(
        info.value,
        TransferTimeout,
        transient=True,
        status=None,
        stage=Stage.DOWNLOAD,
        message=f"Failed to download from S3: connect timed out after 0.5 s (http://127.0.0.1:{unanswering_port}/bucket/a.wav)",
    )
    assert os.listdir(dest) == []


def test_oversize_by_content_length_is_refused_before_reading(fault_server, dest):
    fault_server.put_object(PATH, AUDIO)
    with Transfer(TransferSettings(max_download_bytes=10_000)) as small:
        with pytest.raises(TooLarge) as info:
            small.download(url(fault_server), dest)
    check(
        info.value,
        TooLarge,
        transient=False,
        status=200,
        stage=Stage.DOWNLOAD,
        message=f"Failed to download from S3: the input is {len(AUDIO)} bytes, over the limit of 10000 bytes",
    )
    assert os.listdir(dest) == []


def test_oversize_by_counting_when_there_is_no_content_length(fault_server, dest):
    fault_server.put_object(PATH, AUDIO)
    fault_server.script(PATH, Fault(chunked=True))
    with Transfer(TransferSettings(max_download_bytes=5000, chunk_bytes=1024)) as small:
        with pytest.raises(TooLarge) as info:
            small.download(url(fault_server), dest)
    check(
        info.value,
        TooLarge,
        transient=False,
        status=200,
        stage=Stage.DOWNLOAD,
        message="Failed to download from S3: the input exceeds the limit of 5000 bytes "
        "(read 5120 bytes so far, no Content-Length up front)",
    )
    assert os.listdir(dest) == []


def test_invalid_url_is_permanent(transfer, dest):
    with pytest.raises(TransferError) as info:
        transfer.download("bucket/a.wav?X-Amz-Signature=0123456789abcdef", dest)
    assert type(info.value) is TransferError
    assert (info.value.transient, info.value.stage, info.value.http_status) == (False, Stage.DOWNLOAD, None)
    assert str(info.value) == "Failed to download from S3: invalid URL 'bucket/a.wav'"
    assert os.listdir(dest) == []


# --- upload ----------------------------------------------------------------------------------------

OUT = "/bucket/out/talk.srt"
SRT = b"1\n00:00:00,000 --> 00:00:01,500\nhello\n"


def test_upload_sends_the_signed_content_type_and_checks_the_etag(fault_server, transfer):
    etag = transfer.upload(url(fault_server, OUT), SRT, "application/x-subrip")
    assert etag == hashlib.md5(SRT).hexdigest()
    (req,) = fault_server.requests_for(OUT)
    assert (req.method, req.header("Content-Type"), req.body_length) == ("PUT", "application/x-subrip", len(SRT))
    assert req.query == SECRET
    assert fault_server.get_object(OUT).body == SRT


@pytest.mark.parametrize(
    ("fault", "cls", "transient", "message"),
    [
        (Fault(403), AccessDenied, True, "Failed to upload to S3: 403 Forbidden"),
        (
            Fault(403, body=s3_error("SignatureDoesNotMatch", "The request signature we calculated does not match")),
            AccessDenied,
            True,
            "Failed to upload to S3: 403 Forbidden (SignatureDoesNotMatch): The request signature we calculated does not match",
        ),
        (
            Fault(404, body=s3_error("NoSuchBucket", "The specified bucket does not exist")),
            UnexpectedStatus,
            False,
            "Failed to upload to S3: 404 Not Found (NoSuchBucket): The specified bucket does not exist",
        ),
        (Fault(500), ServerError, True, "Failed to upload to S3: 500 Internal Server Error"),
        (Fault(503), ServerError, True, "Failed to upload to S3: 503 Service Unavailable"),
        (
            Fault(400, body=s3_error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")),
            UnexpectedStatus,
            False,
            "Failed to upload to S3: 400 Bad Request (EntityTooLarge): Your proposed upload exceeds the maximum allowed size",
        ),
    ],
    ids=lambda v: getattr(v, "status", None) if isinstance(v, Fault) else None,
)
def test_upload_status_classification(fault_server, transfer, fault, cls, transient, message):
    fault_server.script(OUT, fault)
    with pytest.raises(cls) as info:
        transfer.upload(url(fault_server, OUT), SRT, "application/x-subrip")
    check(info.value, cls, transient=transient, status=fault.status, stage=Stage.UPLOAD, message=message)
    assert fault_server.get_object(OUT) is None


def test_upload_failure_becomes_the_recorded_reason(fault_server, transfer):
    fault_server.script(OUT, Fault(403, body=s3_error("AccessDenied", "Request has expired")))
    with pytest.raises(AccessDenied) as info:
        transfer.upload(url(fault_server, OUT), SRT, "application/x-subrip")
    failure = Failure.from_exception(info.value)
    assert failure == Failure(
        stage=Stage.UPLOAD,
        error_class="AccessDenied",
        message="Failed to upload to S3: 403 Forbidden (AccessDenied): Request has expired",
        transient=True,
        http_status=403,
    )
    assert failure.reason == "upload: Failed to upload to S3: 403 Forbidden (AccessDenied): Request has expired"


def test_wrong_etag_is_upload_corrupted(fault_server, transfer):
    fault_server.script(OUT, Fault(etag="0" * 32))
    with pytest.raises(UploadCorrupted) as info:
        transfer.upload(url(fault_server, OUT), SRT, "application/x-subrip")
    check(
        info.value,
        UploadCorrupted,
        transient=True,
        status=200,
        stage=Stage.UPLOAD,
        message=f"Failed to upload to S3: upload corrupted, ETag {'0' * 32} does not match "
        f"MD5 {hashlib.md5(SRT).hexdigest()} of the {len(SRT)} bytes sent",
    )


def test_multipart_etag_cannot_be_checked_and_is_accepted(fault_server, transfer):
    fault_server.script(OUT, Fault(etag="9b2cf535f27731c974343645a3985328-3"))
    assert transfer.upload(url(fault_server, OUT), SRT, "text/plain") == "9b2cf535f27731c974343645a3985328-3"


def test_upload_response_timeout(fault_server, transfer):
    fault_server.script(OUT, Fault(delay_s=2.0))
    with pytest.raises(TransferTimeout) as info:
        transfer.upload(url(fault_server, OUT), SRT, "application/x-subrip")
    check(
        info.value,
        TransferTimeout,
        transient=True,
        status=None,
        stage=Stage.UPLOAD,
        message=f"Failed to upload to S3: read timed out after 0.5 s of silence ({fault_server.url(OUT)})",
    )


def test_upload_connection_reset(fault_server, transfer):
    fault_server.script(OUT, Fault(reset=True))
    with pytest.raises(ConnectionLost) as info:
        transfer.upload(url(fault_server, OUT), SRT, "application/x-subrip")
    check(
        info.value,
        ConnectionLost,
        transient=True,
        status=None,
        stage=Stage.UPLOAD,
        message=f"Failed to upload to S3: connection reset by peer ({fault_server.url(OUT)})",
    )
    assert fault_server.requests_for(OUT)[0].body_length == len(SRT)


def test_upload_connection_refused(transfer):
    port = closed_port()
    with pytest.raises(ConnectionLost) as info:
        transfer.upload(f"http://127.0.0.1:{port}/bucket/out/a.json?{SECRET}", b"{}", "application/json")
    check(
        info.value,
        ConnectionLost,
        transient=True,
        status=None,
        stage=Stage.UPLOAD,
        message=f"Failed to upload to S3: connection refused (http://127.0.0.1:{port}/bucket/out/a.json)",
    )


# --- hygiene ---------------------------------------------------------------------------------------


def test_logs_never_carry_the_signature(fault_server, transfer, dest, caplog):
    fault_server.script(PATH, Fault(403))
    with caplog.at_level(logging.DEBUG, logger="raytranscribe.transfer"):
        with pytest.raises(AccessDenied):
            transfer.download(url(fault_server), dest, task_id=7, attempt=2)
    (record,) = [r for r in caplog.records if r.name == "raytranscribe.transfer"]
    assert record.getMessage() == f"Failed to download from S3: 403 Forbidden [AccessDenied {fault_server.url(PATH)}]"
    assert (record.task_id, record.attempt, record.stage) == (7, 2, "download")
    assert "0123456789abcdef" not in caplog.text and "AKIDEXAMPLE" not in caplog.text


def test_redact_keeps_scheme_host_and_path_only():
    assert redact("https://user:pw@bkt.s3.amazonaws.com/a%20b/c.wav?X-Amz-Signature=abc") == "https://bkt.s3.amazonaws.com/a%20b/c.wav"


def test_name_hint_is_sanitised_and_keeps_a_safe_extension(fault_server, transfer, dest):
    fault_server.put_object(PATH, AUDIO)
    got = transfer.download(url(fault_server), dest, name_hint="../../etc/evil name.FLAC")
    assert got.path.parent == dest
    assert got.path.suffix == ".FLAC"
    assert got.path.name.startswith("evil_name-")
    got.path.unlink()
    got = transfer.download(url(fault_server), dest, name_hint="weird.ext;rm -rf")
    assert got.path.suffix == ""
    got.path.unlink()
