"""``raytranscribe export``: an index of the results, one row per task, as Parquet or JSON lines.

The store hands the tasks over in pages (a keyset walk by id, :meth:`Store.result_pages`); each page
is written as it comes (Parquet row groups of ``ROW_GROUP_ROWS`` rows, or lines), so memory holds a
page and a row group whatever the table's size. Only a complete file reaches the destination: it is
written to a temporary file beside a local destination and renamed over it, or, for ``s3://``, to a
local temporary file that the driver then uploads (:class:`S3Storage`, the one holder of credentials).
A failure, an interrupt included, leaves nothing at the destination.

The columns are :data:`COLUMNS`, in that order, in both formats. ``options`` and ``quality`` are JSON
text in Parquet: a Parquet file's schema is fixed when the writer opens, before any row is read,
and both documents differ between rows and grow between versions (quality is NULL until measured,
its measures and reasons may gain keys; options gain fields), so a struct column would need a second
pass over the table or drop what it did not foresee, and files of two versions would not share a
schema. Text keeps every key, and each reader expands it in one call (pandas ``json.loads`` and
``pd.json_normalize``, Spark ``from_json``). JSON lines carry them as nested objects, as JSON does.

Imports neither pyarrow (:func:`require_pyarrow` says which extra brings it) nor boto3 until used,
and no SQL: the rows come from the store.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from raytranscribe.errors import ConfigError, InvalidInput, InvalidURI
from raytranscribe.store.views import ResultRow
from raytranscribe.uris import SCHEME, S3Uri, abbrev, parse_s3_uri

if TYPE_CHECKING:
    import pyarrow

    from raytranscribe.storage import S3Storage

__all__ = [
    "COLUMNS",
    "Destination",
    "ExportFormat",
    "ExportResult",
    "destination",
    "require_pyarrow",
    "write",
]

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 100_000  # rows per Parquet row group: big enough to scan fast, small enough to hold
INSTALL_HINT = "pip install 'raytranscribe[export]'"

# Every column, in order: what a user loading a backfill's results wants to join, filter and trust
# (the store's ResultRow, the one copy).
COLUMNS: tuple[str, ...] = ResultRow._fields
_JSON_COLUMNS = ("options", "quality")  # JSON text in Parquet, nested objects in JSON lines
_TIME_COLUMNS = ("created_at", "completed_at")


class ExportFormat(str, enum.Enum):
    PARQUET = "parquet"
    JSONL = "jsonl"

    def __str__(self) -> str:
        return self.value


EXTENSIONS: dict[str, ExportFormat] = {
    ".parquet": ExportFormat.PARQUET,
    ".pq": ExportFormat.PARQUET,
    ".jsonl": ExportFormat.JSONL,
    ".ndjson": ExportFormat.JSONL,
}
CONTENT_TYPES = {ExportFormat.PARQUET: "application/vnd.apache.parquet", ExportFormat.JSONL: "application/x-ndjson"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


@dataclass(frozen=True)
class Destination:
    """Where an export goes, checked: a local file or an S3 object, and the format to write."""

    text: str  # as the user gave it
    format: ExportFormat
    path: Path | None = None  # a local file
    s3: S3Uri | None = None  # an S3 object


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    dest: str
    format: ExportFormat
    rows: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "dest": self.dest, "format": self.format.value, "bytes": self.bytes}


def destination(dest: str, fmt: ExportFormat | str | None = None) -> Destination:
    """Check ``dest`` (a local path or ``s3://bucket/key``) and pick the format: ``fmt`` when given,
    else the extension's (``.parquet``/``.pq``, ``.jsonl``/``.ndjson``; none: Parquet). Pure: no I/O.
    Raises InvalidInput (InvalidURI for a bad S3 URI) naming what is wrong."""
    if not dest or not dest.strip():
        raise InvalidInput("give the export destination: a local path or s3://bucket/key")
    scheme = _SCHEME.match(dest)
    if scheme and dest.startswith(SCHEME):
        s3 = parse_s3_uri(dest, what="export destination")
        name, path = s3.key.rsplit("/", 1)[-1], None
    elif scheme:
        raise InvalidURI(
            f"unsupported export destination {abbrev(dest)!r} (scheme {scheme.group(1)!r}): "
            "write a local path or s3://bucket/key"
        )
    else:
        s3, path = None, Path(dest).expanduser()
        name = path.name
    suffix = Path(name).suffix.lower()
    by_extension = EXTENSIONS.get(suffix)
    if fmt is not None:
        try:
            chosen = ExportFormat(str(fmt).lower())
        except ValueError:
            raise InvalidInput(
                f"unknown export format {fmt!r}: choose from {', '.join(f.value for f in ExportFormat)}"
            ) from None
        if by_extension is not None and by_extension is not chosen:
            raise InvalidInput(f"export format {chosen} does not match the destination's extension {suffix!r}")
    elif by_extension is not None:
        chosen = by_extension
    elif not suffix:
        chosen = ExportFormat.PARQUET
    else:
        raise InvalidInput(
            f"cannot tell the export format of {abbrev(dest)!r} from its extension {suffix!r}: name it "
            f"{', '.join(EXTENSIONS)}, or give the format ({', '.join(f.value for f in ExportFormat)})"
        )
    return Destination(text=dest, format=chosen, path=path, s3=s3)


def require_pyarrow() -> None:
    """Raise ConfigError naming the extra to install when pyarrow is missing (Parquet needs it)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"Parquet export needs pyarrow, which is not installed: {INSTALL_HINT} (or write JSON lines: a "
            ".jsonl destination or the jsonl format)"
        ) from exc


class StorageFactory(Protocol):
    def __call__(self) -> S3Storage: ...


def write(
    dest: Destination, pages: Iterable[list[ResultRow]], *, storage: StorageFactory | None = None
) -> ExportResult:
    """Write every row of ``pages`` to ``dest``, all or nothing. ``storage`` makes the S3 client an
    ``s3://`` destination needs (asked for before any row is read, so a missing bucket fails at once)."""
    if dest.format is ExportFormat.PARQUET:
        require_pyarrow()
    s3: S3Storage | None = None
    if dest.s3 is not None:
        if storage is None:
            raise InvalidInput(f"an s3:// export destination needs S3 settings: {abbrev(dest.text)!r}")
        s3 = storage()
        s3.check_writable(dest.s3)
    with _staged(dest) as (tmp, fh):
        rows = _write_rows(dest.format, pages, fh)
        fh.close()
        size = os.path.getsize(tmp)
        if s3 is not None and dest.s3 is not None:
            s3.upload_file(str(tmp), dest.s3, CONTENT_TYPES[dest.format])
    log.info("exported %d task(s) to %s (%s, %d bytes)", rows, dest.text, dest.format, size)
    return ExportResult(dest=dest.text, format=dest.format, rows=rows, bytes=size)


@contextmanager
def _staged(dest: Destination) -> Iterator[tuple[Path, IO[bytes]]]:
    """A temporary file to write into, which becomes ``dest.path`` when the block ends well (renamed
    over it) and is removed otherwise. For S3 it lives in a temporary folder and is always removed."""
    if dest.path is None:
        folder = Path(tempfile.mkdtemp(prefix="raytranscribe-export-"))
        try:
            tmp = folder / "export"
            with tmp.open("wb") as fh:
                yield tmp, fh
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    path = dest.path
    if path.is_dir():
        raise InvalidInput(f"cannot write the export to {abbrev(str(path))!r}: it is a folder")
    parent = path.parent
    if not parent.is_dir():
        problem = "is not a folder" if parent.exists() else "does not exist"
        raise InvalidInput(f"cannot write the export to {abbrev(str(path))!r}: folder {str(parent)!r} {problem}")
    try:
        # Beside the destination, so the rename stays on one file system and so is atomic.
        fd, name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:
        raise InvalidInput(f"cannot write the export to {abbrev(str(path))!r}: {exc.strerror}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield tmp, fh
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_rows(fmt: ExportFormat, pages: Iterable[list[ResultRow]], fh: IO[bytes]) -> int:
    if fmt is ExportFormat.JSONL:
        return _write_jsonl(pages, fh)
    return _write_parquet(pages, fh)


# --- JSON lines --------------------------------------------------------------------------------


def _jsonl_record(r: ResultRow) -> dict[str, Any]:
    record: dict[str, Any] = dict(zip(COLUMNS, r))
    record["status"] = r.status.value
    record["output_uris"] = list(r.output_uris)
    for name in _JSON_COLUMNS:
        if record[name] is not None:
            record[name] = json.loads(record[name])
    for name in _TIME_COLUMNS:
        if record[name] is not None:
            record[name] = record[name].astimezone(UTC).isoformat()
    return record


def _write_jsonl(pages: Iterable[list[ResultRow]], fh: IO[bytes]) -> int:
    rows = 0
    for page in pages:
        lines = "".join(json.dumps(_jsonl_record(r), ensure_ascii=False) + "\n" for r in page)
        fh.write(lines.encode("utf-8"))
        rows += len(page)
    return rows


# --- Parquet -----------------------------------------------------------------------------------


def parquet_schema() -> pyarrow.Schema:
    """The Parquet file's columns and types (:data:`COLUMNS`, in order)."""
    import pyarrow as pa

    when = pa.timestamp("us", tz="UTC")
    types = {
        "id": pa.int64(), "status": pa.string(), "input_uri": pa.string(), "output_uri": pa.string(),
        "output_uris": pa.list_(pa.string()), "engine": pa.string(), "model": pa.string(), "options": pa.string(),
        "language": pa.string(), "audio_duration_s": pa.float64(), "text_preview": pa.string(),
        "quality": pa.string(), "suspect": pa.bool_(), "attempt": pa.int32(), "retries": pa.int32(),
        "failure_reason": pa.string(), "created_at": when, "completed_at": when,
    }  # fmt: skip
    nullable = {"id": False, "status": False, "input_uri": False, "output_uri": False, "output_uris": False,
                "engine": False, "model": False, "options": False, "attempt": False, "retries": False,
                "created_at": False}  # fmt: skip
    return pa.schema([pa.field(name, types[name], nullable=nullable.get(name, True)) for name in COLUMNS])


def _record_batch(page: list[ResultRow], schema: pyarrow.Schema) -> pyarrow.RecordBatch:
    import pyarrow as pa

    columns: dict[str, Any] = dict(zip(COLUMNS, zip(*page)))  # a page of rows is its columns transposed
    columns["status"] = [status.value for status in columns["status"]]
    return pa.RecordBatch.from_pydict(columns, schema=schema)


def _write_parquet(pages: Iterable[list[ResultRow]], fh: IO[bytes]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    rows = 0
    pending: list[pa.RecordBatch] = []
    held = 0
    # zstd: smaller than the default snappy at a like speed, and read by pandas, Ray, DuckDB and Spark.
    with pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        for page in pages:
            pending.append(_record_batch(page, schema))
            held += len(page)
            rows += len(page)
            if held >= ROW_GROUP_ROWS:  # each write_table call is at least one row group: gather pages first
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
                pending, held = [], 0
        if pending:  # (an export of no rows is still a file, with the schema and no row group)
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP_ROWS)
    return rows
