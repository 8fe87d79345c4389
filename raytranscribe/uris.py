"""S3 URIs: parsing, bucket and key rules, and the output layout. The one copy of these rules.

Pure: no boto3, no I/O. The driver (storage, cli), the store (NewTask) and the manifest reader all
validate with the same functions, so a URI the CLI accepts is one the store accepts and vice versa.

Keys are taken literally, as ``aws s3`` does, with one exception: a key may not hold ``.`` or
``..`` segments, nor empty ones (``a//b``, a leading ``/``). HTTP clients (requests/urllib3) resolve
dot segments in a presigned URL's path before sending it, so such a key would make a worker read or
write *another* object (on S3-compatible stores that do not check the signature of the path it
arrives with); an empty segment is refused because stores and proxies disagree about merging
``//``. Refusing them everywhere a URI enters means no presigned URL ever holds one.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from raytranscribe.errors import InvalidURI

__all__ = [
    "AUDIO_EXTENSIONS",
    "MAX_KEY_BYTES",
    "SCHEME",
    "S3Uri",
    "abbrev",
    "bucket_problem",
    "is_audio_key",
    "key_problem",
    "output_stem",
    "output_uri",
    "parse_s3_uri",
]

SCHEME = "s3://"
MAX_KEY_BYTES = 1024

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        "wav", "wave", "flac", "mp3", "m4a", "m4b", "aac", "ogg", "oga", "opus", "webm", "weba",
        "mp4", "m4v", "mov", "mkv", "mka", "wma", "wmv", "aif", "aiff", "aifc", "amr", "3gp", "ac3",
        "caf", "au", "snd", "spx", "mpga", "mpeg", "avi",
    }
)  # fmt: skip

_BUCKET_CHARS = re.compile(r"[a-z0-9.\-]+")
_DOT_SEGMENTS = (".", "..")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def folder_key(self) -> str:
        """The key as a folder: ``""`` for the bucket root, else ending with exactly one ``/``."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def join(self, *parts: str) -> S3Uri:
        """Append path segments with exactly one ``/`` between them; a trailing ``/`` on the last part is kept."""
        if not any(p.strip("/") for p in parts):
            return self
        segments = [self.key.rstrip("/")] if self.key.strip("/") else []
        segments += [p.strip("/") for p in parts if p.strip("/")]
        key = "/".join(segments)
        if parts and parts[-1].endswith("/") and key:
            key += "/"
        return S3Uri(self.bucket, key)


@functools.lru_cache(maxsize=1024)  # a listing or manifest names a few buckets a million times
def bucket_problem(bucket: str) -> str | None:
    """What is wrong with a bucket name under S3's naming rules, or None."""
    if not 3 <= len(bucket) <= 63:
        return f"must be 3 to 63 characters long (got {len(bucket)})"
    if not _BUCKET_CHARS.fullmatch(bucket):
        bad = sorted({c for c in bucket if not _BUCKET_CHARS.fullmatch(c)})
        return f"may contain only lowercase letters, digits, dots and hyphens (found {', '.join(map(repr, bad))})"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return "must start and end with a lowercase letter or digit"
    if ".." in bucket:
        return "must not contain two adjacent dots"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        return "must not be formatted as an IP address"
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if bucket.startswith(prefix):
            return f"must not start with the reserved prefix {prefix!r}"
    for suffix in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if bucket.endswith(suffix):
            return f"must not end with the reserved suffix {suffix!r}"
    return None


def key_problem(key: str, *, prefix: bool = False) -> str | None:
    """What is wrong with an object key (or, with ``prefix``, a folder key: empty or ending in ``/``), or None."""
    size = len(key.encode("utf-8", errors="surrogatepass"))
    if size > MAX_KEY_BYTES:
        return f"key is {size} bytes in UTF-8; S3 allows at most {MAX_KEY_BYTES}"
    if prefix and key == "":
        return None  # the bucket root
    body = key[:-1] if prefix and key.endswith("/") else key  # a folder's one trailing '/' is no segment
    # Most keys: no segment can be empty or start with a dot, so none is '', '.' or '..' (no split needed).
    if body and body[0] not in "/." and body[-1] != "/" and "//" not in body and "/." not in body:
        return None
    for segment in body.split("/"):
        if segment in _DOT_SEGMENTS:
            return f"key {abbrev(key)!r} has a {segment!r} segment, which HTTP clients resolve to another object"
        if segment == "":
            return f"key {abbrev(key)!r} has an empty segment ('//' or a leading '/')"
    return None


def abbrev(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_s3_uri(text: str, *, allow_prefix: bool = False, what: str = "S3 URI") -> S3Uri:
    """Parse and validate ``s3://bucket/key``; ``what`` names the URI in errors ("input URI" ...).

    Keys are taken literally (no percent-decoding), as ``aws s3`` does: spaces and non-ASCII are fine.
    With ``allow_prefix`` the key may be empty or end with ``/`` (a folder to list or write into).
    """
    if not isinstance(text, str):
        raise InvalidURI(f"invalid {what} {text!r}: expected a string s3://bucket/key")
    if not text.strip():
        raise InvalidURI(f"empty {what} {text!r}: expected s3://bucket/key")
    if not text.startswith(SCHEME):
        scheme = text.split("://", 1)[0] if "://" in text else None
        got = f"scheme {scheme!r}" if scheme is not None else "no scheme"
        raise InvalidURI(f"invalid {what} {abbrev(text)!r}: must start with 's3://' ({got})")
    bucket, _, key = text[len(SCHEME) :].partition("/")
    if not bucket:
        raise InvalidURI(f"invalid {what} {abbrev(text)!r}: bucket name is empty")
    problem = bucket_problem(bucket)
    if problem:
        raise InvalidURI(f"invalid {what} {abbrev(text)!r}: bucket name {abbrev(bucket)!r} {problem}")
    if not allow_prefix and (key == "" or key.endswith("/")):
        problem = "is empty" if key == "" else f"{abbrev(key)!r} ends with '/' (a folder, not an object)"
        raise InvalidURI(f"invalid {what} {abbrev(text)!r}: object key {problem}")
    problem = key_problem(key, prefix=allow_prefix)
    if problem:
        raise InvalidURI(f"invalid {what} {abbrev(text)!r}: {problem}")
    return S3Uri(bucket, key)


def _strip_extension(name: str) -> str:
    # Only the last path segment loses its suffix: "a.b/c" stays "a.b/c", "x.tar.gz" becomes "x.tar",
    # and a dotfile (".hidden") has no extension to lose. "..wav" keeps its name: "." is no file name.
    suffix = PurePosixPath(name).suffix
    stem = name[: -len(suffix)] if suffix else name
    return name if stem.rsplit("/", 1)[-1] in _DOT_SEGMENTS else stem


def output_stem(input_uri: S3Uri, output_prefix: S3Uri, *, base_prefix: S3Uri | None = None) -> S3Uri:
    """Where a task's outputs go, without the format extension. The ONE place that decides the layout.

    ``{output_prefix}/{input key relative to base_prefix, or its basename}`` minus the input's
    extension. Deterministic, so a retried task overwrites its own outputs instead of adding new ones.
    The composed stem is checked again: whatever the parts, it is a clean key below ``output_prefix``.
    """
    if input_uri.is_prefix:
        raise InvalidURI(f"input {input_uri} is a folder, not an object")
    if base_prefix is None:
        relative = input_uri.key.rsplit("/", 1)[-1]
    else:
        base_key = base_prefix.folder_key
        if base_prefix.bucket != input_uri.bucket or not input_uri.key.startswith(base_key):
            raise InvalidURI(f"input {input_uri} is not under the base prefix {base_prefix}")
        relative = input_uri.key[len(base_key) :]
    stem = _strip_extension(relative)
    if not stem.strip("/"):
        raise InvalidURI(f"input {input_uri} leaves an empty output name")
    out = S3Uri(output_prefix.bucket, stem) if output_prefix.key.strip("/") == "" else output_prefix.join(stem)
    # The longest key this stem gets is "<stem>.json" (or another four-letter format), give or take.
    problem = key_problem(out.key) or key_problem(out.key + ".json")
    if problem is None and not out.key.startswith(output_prefix.folder_key):
        problem = "it would leave the output prefix"
    if problem:
        raise InvalidURI(f"output for {abbrev(str(input_uri))} under {abbrev(str(output_prefix))}: {problem}")
    return out


def output_uri(stem: S3Uri | str, fmt: str) -> S3Uri:
    base = stem if isinstance(stem, S3Uri) else parse_s3_uri(stem, what="output stem")
    uri = S3Uri(base.bucket, f"{base.key}.{fmt}")
    problem = key_problem(uri.key)
    if problem:
        raise InvalidURI(f"output {abbrev(str(uri))}: {problem}")
    return uri


def is_audio_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    suffix = PurePosixPath(name).suffix
    return bool(suffix) and suffix[1:].lower() in AUDIO_EXTENSIONS
