"""`raytranscribe export` and Client.export: the index of the results, read back with pyarrow and
compared with the tasks table; real PostgreSQL, real S3 over HTTP (moto)."""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from raytranscribe import Client, ExportResult
from raytranscribe.errors import ConfigError, InvalidInput
from raytranscribe.export import COLUMNS, ExportFormat, destination, write
from raytranscribe.store import TaskStatus
from tests.store.test_result_pages import judge, settle


def tasks_table(store, statuses=("completed",)) -> list[dict]:
    """The tasks as the table holds them, read here independently of the export's statement."""
    sql = sa.text(
        "SELECT id, CAST(status AS text) AS status, input_uri, output_uri, output_uris, engine, model, options, "
        "language, audio_duration_s, text_preview, quality, suspect, attempt, retries, failure_reason, created_at, "
        "completed_at FROM tasks WHERE CAST(status AS text) = ANY(:s) ORDER BY id"
    )
    with store.db.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sql, {"s": list(statuses)})]
    for row in rows:
        row["output_uris"] = row["output_uris"] or []
    return rows


def parquet_rows(table: pa.Table) -> list[dict]:
    """Rows of an exported Parquet table with the JSON text columns parsed."""
    rows = table.to_pylist()
    for row in rows:
        row["options"] = json.loads(row["options"])
        row["quality"] = json.loads(row["quality"]) if row["quality"] is not None else None
    return rows


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_parquet_export_reads_back_as_the_tasks_table(cli, store, tmp_path):
    settle(store, 12, dead={4}, pending={12})
    judge(store, {1: False, 2: True})
    dest = tmp_path / "index.parquet"
    result = cli("export", str(dest), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"rows": 10, "dest": str(dest), "format": "parquet",
                                         "bytes": dest.stat().st_size}  # fmt: skip
    table = pq.read_table(dest)
    assert table.schema.names == list(COLUMNS)
    types = {f.name: f.type for f in table.schema}
    assert types["id"] == pa.int64() and types["output_uris"] == pa.list_(pa.string())
    assert types["suspect"] == pa.bool_() and types["audio_duration_s"] == pa.float64()
    assert types["completed_at"] == pa.timestamp("us", tz="UTC") and types["quality"] == pa.string()
    assert parquet_rows(table) == tasks_table(store)
    assert [r["suspect"] for r in table.to_pylist()[:3]] == [False, True, None]  # a nullable verdict
    assert list(tmp_path.iterdir()) == [dest]  # no temporary file left beside it

    text = cli("export", str(tmp_path / "again.parquet"))  # an existing file of another name: untouched
    assert text.exit_code == 0 and text.stdout.startswith(f"exported 10 task(s) to {tmp_path / 'again.parquet'} (parquet, ")


def test_jsonl_export_of_several_statuses_through_the_client(store, database_url, tmp_path):
    settle(store, 6, dead={2, 5})
    judge(store, {3: True})
    dest = tmp_path / "index.jsonl"
    dest.write_text("an older export\n")  # replaced whole
    with Client(database_url) as rt:
        result = rt.export(str(dest), status=["completed", TaskStatus.DEAD], page_size=2)
        assert isinstance(result, ExportResult) and (result.rows, result.format) == (6, ExportFormat.JSONL)
        lines = [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]
        expected = tasks_table(store, ("completed", "dead"))
        for row in expected:
            for name in ("created_at", "completed_at"):
                row[name] = row[name].astimezone(UTC).isoformat() if row[name] else None
        assert lines == expected and [list(line) for line in lines] == [list(COLUMNS)] * 6
        assert lines[2]["quality"] == {"avg_logprob": -0.3, "reasons": ["repetition loop"]}  # an object, not text

        suspects = rt.export(str(tmp_path / "suspects"), suspect=True)  # no extension: Parquet
        assert (suspects.format, suspects.rows) == (ExportFormat.PARQUET, 1)
        assert pq.read_table(tmp_path / "suspects").column("id").to_pylist() == [3]
        with pytest.raises(InvalidInput, match="unknown status 'done'"):
            rt.export(str(tmp_path / "x.parquet"), status="done")


def test_an_export_of_nothing_is_a_file_with_the_columns(cli, store, tmp_path):
    result = cli("export", str(tmp_path / "empty.parquet"), "--json")
    assert json.loads(result.stdout)["rows"] == 0
    table = pq.read_table(tmp_path / "empty.parquet")
    assert (table.num_rows, table.schema.names) == (0, list(COLUMNS))
    assert cli("export", str(tmp_path / "empty.jsonl")).exit_code == 0
    assert (tmp_path / "empty.jsonl").read_bytes() == b""


def test_s3_export_uploads_the_finished_file(cli, store, local_s3, s3_client, bucket):
    settle(store, 5, dead={3})
    env = {"RAYTRANSCRIBE_S3__ENDPOINT_URL": local_s3.endpoint_url}
    result = cli("export", f"s3://{bucket}/indexes/run 1/results.parquet", "--json", env=env)
    assert result.exit_code == 0, result.output
    obj = s3_client.get_object(Bucket=bucket, Key="indexes/run 1/results.parquet")
    body = obj["Body"].read()
    assert obj["ContentType"] == "application/vnd.apache.parquet" and len(body) == json.loads(result.stdout)["bytes"]
    assert parquet_rows(pq.read_table(io.BytesIO(body))) == tasks_table(store)

    jsonl = cli("export", f"s3://{bucket}/indexes/all", "--format", "jsonl", "--status", "dead", env=env)
    assert jsonl.exit_code == 0, jsonl.output
    body = s3_client.get_object(Bucket=bucket, Key="indexes/all")["Body"].read().decode()
    assert [json.loads(line)["id"] for line in body.splitlines()] == [3]

    missing = cli("export", "s3://no-such-bucket-here/x.parquet", env=env)
    assert one_error_line(missing) == "error: cannot write s3://no-such-bucket-here/x.parquet: bucket " \
                                      "'no-such-bucket-here' does not exist"


def _keys(s3_client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize(
    "args,message",
    [
        (["gs://bkt/index.parquet"], "unsupported export destination 'gs://bkt/index.parquet' (scheme 'gs'): write a "
                                     "local path or s3://bucket/key"),
        (["{tmp}/index.csv"], "cannot tell the export format of '{tmp}/index.csv' from its extension '.csv': name it "
                              ".parquet, .pq, .jsonl, .ndjson, or give the format (parquet, jsonl)"),
        (["{tmp}/index", "--format", "xml"], "unknown export format 'xml': choose from parquet, jsonl"),
        (["{tmp}/index.parquet", "--format", "jsonl"], "export format jsonl does not match the destination's "
                                                       "extension '.parquet'"),
        (["{tmp}/nowhere/index.parquet"], "cannot write the export to '{tmp}/nowhere/index.parquet': folder "
                                          "'{tmp}/nowhere' does not exist"),
        (["{tmp}/a-file/index.parquet"], "cannot write the export to '{tmp}/a-file/index.parquet': folder "
                                         "'{tmp}/a-file' is not a folder"),
        (["{tmp}"], "cannot write the export to '{tmp}': it is a folder"),
        (["s3://Bad_Bucket/x.parquet"], "invalid export destination 's3://Bad_Bucket/x.parquet': bucket name "
                                        "'Bad_Bucket' may contain only lowercase letters, digits, dots and hyphens "
                                        "(found 'B', '_')"),
        (["s3://bkt/folder/"], "invalid export destination 's3://bkt/folder/': object key 'folder/' ends with '/' "
                               "(a folder, not an object)"),
    ],
    ids=["scheme", "extension", "format", "format-vs-extension", "no-folder", "parent-is-a-file", "a-folder",
         "bucket-name", "s3-folder"],  # fmt: skip
)
def test_a_bad_destination_is_one_line_and_exit_2(cli, store, tmp_path, args, message):
    settle(store, 2)
    (tmp_path / "a-file").write_text("x")
    before = sorted(tmp_path.iterdir())
    result = cli("export", *[a.format(tmp=tmp_path) for a in args])
    assert one_error_line(result) == "error: " + message.format(tmp=tmp_path)
    assert sorted(tmp_path.iterdir()) == before


def test_without_pyarrow_parquet_is_refused_naming_the_extra_and_jsonl_still_works(cli, store, tmp_path, monkeypatch):
    settle(store, 2)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` meets where it is not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = cli("export", str(tmp_path / "index.parquet"))
    assert one_error_line(result) == (
        "error: Parquet export needs pyarrow, which is not installed: pip install 'raytranscribe[export]' "
        "(or write JSON lines: a .jsonl destination or the jsonl format)"
    )
    assert list(tmp_path.iterdir()) == []
    # Checked before the database is asked anything: this one would answer after the store's retries.
    with pytest.raises(ConfigError, match=r"raytranscribe\[export\]"):
        Client("postgresql://postgres@127.0.0.1:1/nowhere").export(str(tmp_path / "x"))
    assert cli("export", str(tmp_path / "index.jsonl")).exit_code == 0
    assert len((tmp_path / "index.jsonl").read_text().splitlines()) == 2


def _failing_pages(store):
    """The first page, then what a read that fails midway raises (the database gone for good)."""
    pages = store.result_pages(page_size=2)
    yield next(pages)
    raise ConfigError("the database went away")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_failure_midway_leaves_the_destination_as_it_was(store, tmp_path, fmt):
    settle(store, 5)
    dest = tmp_path / f"index.{fmt}"
    dest.write_bytes(b"the last good export")
    with pytest.raises(ConfigError, match="went away"):
        write(destination(str(dest)), _failing_pages(store))
    assert dest.read_bytes() == b"the last good export" and list(tmp_path.iterdir()) == [dest]


def test_a_failure_midway_uploads_nothing(store, storage, s3_client, bucket):
    settle(store, 5)
    with pytest.raises(ConfigError, match="went away"):
        write(destination(f"s3://{bucket}/index.parquet"), _failing_pages(store), storage=lambda: storage)
    assert _keys(s3_client, bucket) == []

