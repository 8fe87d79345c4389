"""HTTP transfers on presigned URLs, worker side: a checked download and a checked upload.

Workers hold no credentials, only the URLs the driver signed. Every way a transfer can fail ends
as one class of :mod:`raytranscribe.errors` (transient or permanent, with the HTTP status when
there is one), so the orchestrator's retry policy can decide without guessing. No automatic
retries here: a retry belongs to the policy, and a retry of a 403 needs a freshly signed URL anyway.

Imports requests; never boto3, the store or ray.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter

from raytranscribe.config import TransferSettings
from raytranscribe.errors import (
    AccessDenied,
    ConnectionLost,
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

log = logging.getLogger(__name__)

# Error bodies are small XML documents; read no more than this to find the S3 error code.
_ERROR_BODY_LIMIT = 64 * 1024
_CODE_RE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]{1,300})</Message>")
_SAFE_EXT = re.compile(r"\.[A-Za-z0-9]{1,12}")
_SAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")
# S3 answers these 400s for conditions a fresh attempt fixes: a slow client socket, or the
# temporary credentials behind the signature expiring.
_TRANSIENT_400 = {"RequestTimeout": TransferTimeout, "ExpiredToken": AccessDenied, "TokenRefreshRequired": AccessDenied}


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    content_type: str | None


def redact(url: str) -> str:
    """``scheme://host/path`` of a URL: the query of a presigned URL is its signature, never log it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not parts.netloc:
        return parts.path[:200]  # not a URL at all; the query (if any) still stays out
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _verb(stage: Stage) -> str:
    return "upload to" if stage is Stage.UPLOAD else "download from"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes/contexts and the ``reason``/``args`` urllib3 and requests wrap errors in."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def _describe_connection_error(exc: BaseException) -> str:
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
    for e in chain:
        if isinstance(e, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(e, u3.NameResolutionError | socket.gaierror):
            return "cannot resolve host"
        if isinstance(e, http.client.RemoteDisconnected):
            return "server closed the connection without a response"
        if isinstance(e, requests.exceptions.SSLError | u3.SSLError):
            return "TLS error"
    root = chain[-1]
    return f"connection lost ({type(root).__name__})"


def _network_error(
    exc: BaseException,
    stage: Stage,
    url: str,
    settings: TransferSettings,
    *,
    status: int | None = None,
    progress: str = "",
) -> TransferError:
    """Classify an exception raised while talking to the server.

    ``status`` is the status of a response whose body was being read when it broke; ``progress``
    says how far the body got ("after 10 of 100 bytes").
    """
    prefix = f"Failed to {_verb(stage)} S3"
    where = redact(url) + (f", {progress}" if progress else "")
    error = _classify_network(exc, stage, prefix, where, settings)
    error.http_status = status
    return error


def _classify_network(
    exc: BaseException, stage: Stage, prefix: str, where: str, settings: TransferSettings
) -> TransferError:
    chain = list(_chain(exc))
    # urllib3's NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError: ask requests,
    # which tells a real connect timeout apart, or a bare urllib3 timeout that is not a refusal.
    connect_timeout = isinstance(exc, requests.exceptions.ConnectTimeout) or any(
        isinstance(e, u3.ConnectTimeoutError) and not isinstance(e, u3.NewConnectionError) for e in chain
    )
    if connect_timeout:
        return TransferTimeout(
            f"{prefix}: connect timed out after {settings.connect_timeout_s:g} s ({where})", stage=stage
        )
    if any(isinstance(e, requests.exceptions.ReadTimeout | u3.ReadTimeoutError | TimeoutError) for e in chain):
        return TransferTimeout(
            f"{prefix}: read timed out after {settings.read_timeout_s:g} s of silence ({where})", stage=stage
        )
    if any(isinstance(e, http.client.IncompleteRead) for e in chain):
        return TruncatedBody(f"{prefix}: body ended early, the connection closed mid-transfer ({where})", stage=stage)
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema | requests.exceptions.InvalidSchema):
        return TransferError(f"{prefix}: invalid URL {where!r}", stage=stage, transient=False)
    if isinstance(exc, requests.exceptions.ConnectionError | u3.ProtocolError | u3.HTTPError | OSError):
        return ConnectionLost(f"{prefix}: {_describe_connection_error(exc)} ({where})", stage=stage)
    return ConnectionLost(f"{prefix}: {type(exc).__name__} ({where})", stage=stage)


def _status_error(resp: requests.Response, stage: Stage) -> TransferError:
    """Classify a non-2xx answer, naming its status, reason and the S3 error code when the body has one."""
    status = resp.status_code
    reason = resp.reason or _phrase(status)
    code, message = _s3_error(resp)
    text = f"Failed to {_verb(stage)} S3: {status} {reason}"
    if code:
        text += f" ({code})"
    if message:
        text += f": {message}"
    if status == 404:
        # On download the object is gone; on upload the bucket is: neither improves with retries.
        cls = InputMissing if stage is Stage.DOWNLOAD else UnexpectedStatus
    elif status == 403:
        cls = AccessDenied  # expired or bad signature: the retry is signed afresh
    elif status == 429 or 500 <= status <= 599:
        cls = ServerError
    elif status == 408:
        cls = TransferTimeout
    elif status == 400 and code in _TRANSIENT_400:
        cls = _TRANSIENT_400[code]
    else:
        cls = UnexpectedStatus
    return cls(text, stage=stage, http_status=status)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def _s3_error(resp: requests.Response) -> tuple[str | None, str | None]:
    """The ``<Code>`` and ``<Message>`` of an S3 XML error body, best effort and bounded."""
    try:
        # iter_content serves both a streamed body and one requests already read (PUT answers, 3xx).
        body = next(resp.iter_content(_ERROR_BODY_LIMIT), b"")
    except Exception:  # noqa: BLE001 - the status already says what matters; the body is a bonus
        return None, None
    code = _CODE_RE.search(body or b"")
    message = _MESSAGE_RE.search(body or b"")
    as_text = lambda m: m.group(1).decode("utf-8", "replace").strip() if m else None  # noqa: E731
    return as_text(code), as_text(message)


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _bytes_received(resp: requests.Response) -> int:
    try:
        return int(resp.raw.tell())
    except Exception:  # noqa: BLE001 - only used for a message
        return 0


def _temp_name_parts(name_hint: str) -> tuple[str, str]:
    """A safe prefix and the extension of ``name_hint`` (decoders sniff formats by it)."""
    name = PurePosixPath(name_hint.replace("\\", "/")).name or "input"
    suffix = PurePosixPath(name).suffix
    ext = suffix if _SAFE_EXT.fullmatch(suffix) else ""
    stem = _SAFE_STEM.sub("_", name[: len(name) - len(suffix)] if suffix else name)[:40] or "input"
    return f"{stem}-", ext


class Transfer:
    """One ``requests.Session`` per worker: pooled connections, timeouts from settings, no retries."""

    def __init__(self, settings: TransferSettings, *, connections: int = 8) -> None:
        """``connections``: kept-alive connections per host, as many as threads transfer at once
        (beyond the pool, each request would open, and for HTTPS handshake, a connection of its own)."""
        self.settings = settings
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        session = requests.Session()
        # max_retries=0: urllib3 does not retry connects or reads behind our back; the policy decides.
        adapter = HTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=max(1, connections))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- download -----------------------------------------------------------------------------

    def download(
        self,
        url: str,
        dest_dir: Path,
        *,
        name_hint: str = "input",
        task_id: int | None = None,
        attempt: int | None = None,
    ) -> Downloaded:
        """Stream ``url`` into a new file in ``dest_dir``; the caller deletes it.

        The file keeps ``name_hint``'s extension. On any failure nothing is left behind in ``dest_dir``.
        """
        stage = Stage.DOWNLOAD
        extra = {"task_id": task_id, "attempt": attempt, "stage": str(stage)}
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        resp = self._send("GET", url, stage, extra, stream=True)
        try:
            if not 200 <= resp.status_code < 300:
                raise self._log_failure(_status_error(resp, stage), url, extra)
            declared = _content_length(resp)
            limit = self.settings.max_download_bytes
            if declared is not None and declared > limit:
                raise self._log_failure(
                    TooLarge(
                        f"Failed to download from S3: the input is {declared} bytes, over the limit of {limit} bytes",
                        http_status=resp.status_code,
                    ),
                    url,
                    extra,
                )
            prefix, ext = _temp_name_parts(name_hint)
            fd, name = tempfile.mkstemp(dir=dest_dir, prefix=prefix, suffix=ext)
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as fh:
                    size = self._stream_body(resp, fh, url, declared, extra)
            except BaseException:
                path.unlink(missing_ok=True)  # a partial file must never look like an input
                raise
        finally:
            resp.close()
        content_type = resp.headers.get("Content-Type")
        log.debug("downloaded %d bytes from %s to %s", size, redact(url), path, extra=extra)
        return Downloaded(path=path, size=size, content_type=content_type)

    def _stream_body(
        self, resp: requests.Response, fh: BinaryIO, url: str, declared: int | None, extra: dict
    ) -> int:
        limit = self.settings.max_download_bytes
        total = 0
        # Raw bytes, not decoded: the count must match Content-Length and the file must be the object.
        chunks = resp.raw.stream(self.settings.chunk_bytes, decode_content=False)
        while True:
            try:
                chunk = next(chunks, None)
            except Exception as exc:
                # tell() counts bytes off the socket, including a partial chunk never handed to us.
                received = max(total, _bytes_received(resp))
                progress = f"after {received} of {declared if declared is not None else 'unknown'} bytes"
                error = _network_error(
                    exc, Stage.DOWNLOAD, url, self.settings, status=resp.status_code, progress=progress
                )
                raise self._log_failure(error, url, extra) from exc
            if chunk is None:
                break
            total += len(chunk)
            if total > limit:
                raise self._log_failure(
                    TooLarge(
                        f"Failed to download from S3: the input exceeds the limit of {limit} bytes "
                        f"(read {total} bytes so far, no Content-Length up front)"
                        if declared is None
                        else f"Failed to download from S3: the body exceeds the limit of {limit} bytes "
                        f"(read {total}, Content-Length said {declared})",
                        http_status=resp.status_code,
                    ),
                    url,
                    extra,
                )
            try:
                fh.write(chunk)
            except OSError as exc:
                # A full or broken local disk: this node's problem, another attempt may land elsewhere.
                raise TransferError(
                    f"Failed to download from S3: cannot write the temporary file: {exc.strerror or exc}",
                    transient=True,
                ) from exc
        if declared is not None and total != declared:
            raise self._log_failure(
                TruncatedBody(
                    f"Failed to download from S3: body has {total} bytes, Content-Length said {declared}",
                    http_status=resp.status_code,
                ),
                url,
                extra,
            )
        return total

    # --- upload -------------------------------------------------------------------------------

    def upload(
        self,
        url: str,
        body: bytes,
        content_type: str,
        *,
        task_id: int | None = None,
        attempt: int | None = None,
    ) -> str:
        """PUT ``body`` with exactly ``content_type`` (it is part of the signature); returns the ETag.

        The ETag is compared with the body's MD5. Multipart ETags (``...-N``) cannot be checked and
        are accepted. Objects encrypted with SSE-KMS/SSE-C answer ETags that are not MD5s.
        """
        stage = Stage.UPLOAD
        extra = {"task_id": task_id, "attempt": attempt, "stage": str(stage)}
        resp = self._send("PUT", url, stage, extra, data=body, headers={"Content-Type": content_type})
        try:
            if not 200 <= resp.status_code < 300:
                raise self._log_failure(_status_error(resp, stage), url, extra)
            raw_etag = resp.headers.get("ETag")
        finally:
            resp.close()
        etag = (raw_etag or "").strip().removeprefix("W/").strip('"').lower()
        expected = hashlib.md5(body).hexdigest()
        if not etag:
            log.warning("no ETag in the answer to PUT %s; integrity not verified", redact(url), extra=extra)
        elif "-" in etag:
            log.debug("multipart ETag %s from %s cannot be compared with an MD5", etag, redact(url), extra=extra)
        elif etag != expected:
            raise self._log_failure(
                UploadCorrupted(
                    f"Failed to upload to S3: upload corrupted, ETag {etag} does not match "
                    f"MD5 {expected} of the {len(body)} bytes sent",
                    http_status=resp.status_code,
                ),
                url,
                extra,
            )
        log.debug("uploaded %d bytes to %s", len(body), redact(url), extra=extra)
        return etag

    # --- shared -------------------------------------------------------------------------------

    def _send(self, method: str, url: str, stage: Stage, extra: dict, **kwargs) -> requests.Response:
        try:
            # No redirects: a presigned URL answers directly; a 3xx means a wrong region or endpoint,
            # and following it would hand the signature to another host.
            return self._session.request(method, url, timeout=self._timeout, allow_redirects=False, **kwargs)
        except (requests.exceptions.RequestException, u3.HTTPError, OSError) as exc:
            raise self._log_failure(_network_error(exc, stage, url, self.settings), url, extra) from exc

    @staticmethod
    def _log_failure(error: TransferError, url: str, extra: dict) -> TransferError:
        where = redact(url)
        suffix = "" if where in error.message else f" {where}"
        log.warning("%s [%s%s]", error.message, type(error).__name__, suffix, extra=extra)
        return error
