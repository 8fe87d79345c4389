"""S3 fixtures: moto's S3 server on loopback (real HTTP, real boto3, real presigned URLs) and our
fault-injecting HTTP server for the failures moto cannot produce.

* ``local_s3``     session: a started :class:`raytranscribe.local.LocalS3`.
* ``s3_settings``  :class:`S3Settings` pointing at it.
* ``s3_client``    a plain boto3 client on it, for arranging and checking objects in tests.
* ``storage``      an :class:`S3Storage` built from ``s3_settings``.
* ``bucket``       a fresh, uniquely named, empty bucket per test.
* ``no_aws_credentials``  this process's standard AWS credential chain emptied for the test: what a
                   driver whose credentials vanished meets (clients built before keep theirs).
* ``fault_server`` a :class:`tests.support.faultserver.FaultServer`, shared by the session and reset
                   (scripts, objects, recorded requests) before each test.
"""

from __future__ import annotations

import uuid

import pytest

from raytranscribe.config import S3Settings
from raytranscribe.local import LocalS3
from tests.support.faultserver import FaultServer


@pytest.fixture(scope="session")
def local_s3():
    server = LocalS3().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(local_s3) -> S3Settings:
    return S3Settings(endpoint_url=local_s3.endpoint_url, region="us-east-1", addressing_style="path")


@pytest.fixture(scope="session")
def s3_client(local_s3):
    return local_s3.client()


@pytest.fixture
def storage(s3_settings):
    from raytranscribe.storage import S3Storage

    return S3Storage(s3_settings)


@pytest.fixture
def bucket(local_s3, s3_client) -> str:
    name = f"rt-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups either


@pytest.fixture(scope="session")
def _fault_server_session():
    with FaultServer() as server:
        yield server


@pytest.fixture
def fault_server(_fault_server_session) -> FaultServer:
    _fault_server_session.reset()
    yield _fault_server_session
    _fault_server_session.reset()  # wake any stall this test left running
