"""S3 fixtures: moto's S3 server on loopback (real HTTP, real boto3, real presigned URLs) and our
fault-injecting HTTP server for the failures moto cannot produce.

* ``local_s3``     session: a started :class:`raytranscribe.local.LocalS3`.
* ``s3_settings``  :class:`S3Settings` pointing at it.
* ``s3_client``    a plain boto3 client on it, for arranging and checking objects in tests.
* ``storage``      an :class:`S3Storage` built from ``s3_settings``.
* ``bucket``       a fresh, uniquely named, empty bucket per test.
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


@pytest.fixture(scope="session")
def _fault_server_session():
    with FaultServer() as server:
        yield server


@pytest.fixture
def fault_server(_fault_server_session) -> FaultServer:
    _fault_server_session.reset()
    yield _fault_server_session
    _fault_server_session.reset()  # wake any stall this test left running
