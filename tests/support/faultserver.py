"""A fault-injecting HTTP server on loopback that stands in for S3 behind presigned URLs.

moto ignores signatures and expiry and never misbehaves on the wire, so the failure paths of
:mod:`raytranscribe.transfer` (and of the worker and orchestrator above it) run against this instead.

Default behaviour, for any path nobody scripted:
  * ``PUT`` stores the body and answers 200 with ``ETag: "<hex md5 of the body>"``;
  * ``GET`` returns what was stored (with the stored Content-Type) or 404.

Scripting, from a test::

    server.script("/bucket/a.wav", Fault(503), Fault())       # 503 once, then the default behaviour
    server.script("/bucket/a.wav", Fault(200, body=b"x" * 100, truncate_to=10))
    server.script("/bucket/out.json", Fault(etag="deadbeef"), method="PUT")
    url = server.url("/bucket/a.wav")                          # http://127.0.0.1:PORT/bucket/a.wav

Responses of a script are used in order, one per request; the last one repeats. ``Fault()`` with
``body=None`` means "the default behaviour with this status": a GET serves the stored object (empty
if none), a PUT with a 2xx status stores the body. Every request is recorded (``server.requests``).

Bounded: every stall ends on its own after ``Fault.stall_s`` (or at :meth:`FaultServer.reset`), the
serving threads are daemons, and :meth:`FaultServer.stop` returns within a fraction of a second.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class Fault:
    """One scripted response.

    status: HTTP status to answer with.
    body: response body; None = default behaviour (stored object on GET, empty otherwise).
    headers: extra response headers (a mapping or pairs).
    delay_s: sleep before answering at all (a slow server; use it on PUT to time out the response).
    stall_after_bytes: send the headers (full Content-Length) and this many body bytes, then go
        silent for ``stall_s`` and close: the client's read timeout should fire first.
    stall_s: how long a stall lasts; keep it a few seconds so a stalled thread always ends.
    truncate_to: declare the full Content-Length, send only this many body bytes, then close.
    reset: close the socket abruptly (RST, SO_LINGER 0): right after reading the request, or after
        ``truncate_to`` bytes when that is set too.
    etag: ETag to answer a PUT with instead of the body's true MD5 (quotes added).
    chunked: send the body with ``Transfer-Encoding: chunked`` and no Content-Length (so only a
        byte count can catch an oversize body).
    rate_bps: send the body at about this many bytes a second: a slow download that keeps advancing.
    """

    status: int = 200
    body: bytes | None = None
    headers: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    stall_after_bytes: int | None = None
    stall_s: float = 3.0
    truncate_to: int | None = None
    reset: bool = False
    etag: str | None = None
    chunked: bool = False
    rate_bps: float | None = None

    def __post_init__(self) -> None:
        # Frozen and hashable: keep headers as a tuple of pairs whatever the caller passed.
        pairs = tuple(self.headers.items()) if isinstance(self.headers, Mapping) else tuple(self.headers)
        object.__setattr__(self, "headers", pairs)


def s3_error(code: str, message: str = "") -> bytes:
    """An S3-style XML error body, e.g. ``s3_error("AccessDenied", "Request has expired")``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        "<RequestId>FAULTSERVER</RequestId></Error>"
    ).encode()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # percent-decoded, without the query string
    query: str
    headers: Mapping[str, str] = field(default_factory=dict)  # keys lower-cased
    body_length: int = 0
    posted: bytes = b""  # a POST's body (webhooks); uploads keep only their length

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Stored:
    body: bytes
    content_type: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so Content-Length is what delimits a body
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:  # webhooks: stored and recorded like a PUT
        self._serve("POST")

    def _serve(self, method: str) -> None:
        fs = self.server.owner
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        body = b""
        if method in ("PUT", "POST"):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        fs._record(
            RecordedRequest(
                method=method,
                path=path,
                query=parts.query,
                headers={k.lower(): v for k, v in self.headers.items()},
                body_length=len(body),
                posted=body if method == "POST" else b"",
            )
        )
        fault = fs._next_fault(method, path)
        try:
            self._respond(fs, method, path, body, fault)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client went away; nothing to tell it

    def _respond(self, fs: FaultServer, method: str, path: str, body: bytes, fault: Fault | None) -> None:
        if fault is None:
            fault = Fault(status=404 if method not in ("PUT", "POST") and fs.get_object(path) is None else 200)
            if fault.status == 404:
                fault = Fault(404, body=s3_error("NoSuchKey", "The specified key does not exist."))
        if fault.delay_s:
            fs._wake.wait(fault.delay_s)
        if fault.reset and fault.truncate_to is None:
            self._reset()
            return

        headers: dict[str, str] = {}
        payload = fault.body if fault.body is not None else b""
        ok = 200 <= fault.status < 300
        if method in ("PUT", "POST") and ok and fault.body is None:  # a POST (webhook) keeps its last body
            fs.put_object(path, body, self.headers.get("Content-Type"))
            headers["ETag"] = f'"{fault.etag if fault.etag is not None else hashlib.md5(body).hexdigest()}"'
        elif method == "PUT" and fault.etag is not None:
            headers["ETag"] = f'"{fault.etag}"'
        elif method in ("GET", "HEAD") and ok and fault.body is None:
            stored = fs.get_object(path)
            if stored is not None:
                payload = stored.body
                if stored.content_type:
                    headers["Content-Type"] = stored.content_type
                headers["ETag"] = f'"{hashlib.md5(stored.body).hexdigest()}"'
        if payload.startswith(b"<?xml"):
            headers["Content-Type"] = "application/xml"
        headers.update(fault.headers)

        self.send_response(fault.status)
        for name, value in headers.items():
            self.send_header(name, value)
        if fault.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif "content-length" not in {k.lower() for k in headers}:
            self.send_header("Content-Length", str(len(payload)))
        if fault.truncate_to is not None or fault.stall_after_bytes is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if method == "HEAD":
            return

        if fault.stall_after_bytes is not None:
            self.wfile.write(payload[: fault.stall_after_bytes])
            self.wfile.flush()
            fs._wake.wait(fault.stall_s)
            self.close_connection = True
            return
        if fault.truncate_to is not None:
            self.wfile.write(payload[: fault.truncate_to])
            self.wfile.flush()
            if fault.reset:
                self._reset()
            self.close_connection = True
            return
        if fault.chunked:
            for start in range(0, len(payload), 4096):
                piece = payload[start : start + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if fault.rate_bps:
            wake, step = fs._wake, max(1, int(fault.rate_bps / 20))  # about 20 writes a second
            for start in range(0, len(payload), step):
                self.wfile.write(payload[start : start + step])
                self.wfile.flush()
                if wake.wait(step / fault.rate_bps):  # reset or stopped: send the rest at once
                    self.wfile.write(payload[start + step :])
                    break
            return
        self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the socket is already gone (reset, or the client hung up)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    owner: FaultServer

    def handle_error(self, request, client_address) -> None:  # a client hanging up is not news
        pass


class FaultServer:
    """See the module docstring. ``start()`` / ``stop()``, or use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._objects: dict[str, _Stored] = {}
        self._scripts: dict[tuple[str | None, str], list[Fault]] = {}
        self._requests: list[RecordedRequest] = []
        self._wake = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultServer:
        httpd = _Server((self.host, self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="faultserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._wake.set()  # end stalls now
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget scripts, objects and recorded requests; end any stall still running."""
        with self._lock:
            old, self._wake = self._wake, threading.Event()
            self._objects.clear()
            self._scripts.clear()
            self._requests.clear()
        old.set()

    # --- scripting --------------------------------------------------------------------------------

    def url(self, path: str, query: str | None = None) -> str:
        """The URL of ``path`` (unquoted, starting with ``/``); ``query`` is appended verbatim."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        base = f"http://{self.host}:{self.port}{quote(path)}"
        return f"{base}?{query}" if query else base

    def script(self, path: str, *responses: Fault, method: str | None = None) -> None:
        """Answer requests on ``path`` (any method, or only ``method``) with ``responses`` in order; the last repeats."""
        if not responses:
            raise ValueError("script() needs at least one Fault")
        with self._lock:
            self._scripts[(method.upper() if method else None, path)] = list(responses)

    def _next_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            queue = self._scripts.get((method, path)) or self._scripts.get((None, path))
            if not queue:
                return None
            return queue.pop(0) if len(queue) > 1 else queue[0]

    # --- objects and records --------------------------------------------------------------------

    def put_object(self, path: str, body: bytes, content_type: str | None = None) -> None:
        with self._lock:
            self._objects[path] = _Stored(bytes(body), content_type)

    def get_object(self, path: str) -> _Stored | None:
        with self._lock:
            return self._objects.get(path)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method.upper())]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests were recorded (for tests driving other processes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                break
            time.sleep(0.01)
        return self.requests


__all__ = ["Fault", "FaultServer", "RecordedRequest", "s3_error"]
