"""S3 on the driver side: URIs, the output layout, presigned URLs and listing.

This is the only module that holds AWS credentials. Workers get presigned URLs and nothing else
(see :mod:`raytranscribe.transfer`). Imports boto3; never ray, the store or requests.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from raytranscribe.config import S3Settings
from raytranscribe.contracts import OutputTarget
from raytranscribe.errors import ConfigError, InvalidURI, PresignError, StorageError

log = logging.getLogger(__name__)

SCHEME = "s3://"
MAX_KEY_BYTES = 1024
# SigV4 presigned URLs are valid for at most seven days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        "wav", "wave", "flac", "mp3", "m4a", "m4b", "aac", "ogg", "oga", "opus", "webm", "weba",
        "mp4", "m4v", "mov", "mkv", "mka", "wma", "wmv", "aif", "aiff", "aifc", "amr", "3gp", "ac3",
        "caf", "au", "snd", "spx", "mpga", "mpeg", "avi",
    }
)  # fmt: skip

CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "txt": "text/plain; charset=utf-8",
}

_BUCKET_CHARS = re.compile(r"[a-z0-9.\-]+")
# Credentials that are missing or could not be fetched right now (IMDS hiccup, SSO token expired,
# STS throttled): the task is fine, so the failure is transient and a later attempt signs afresh.
_CREDENTIAL_ERRORS: tuple[type[BaseException], ...] = (
    bex.NoCredentialsError,
    bex.PartialCredentialsError,
    bex.CredentialRetrievalError,
    bex.MetadataRetrievalError,
    bex.TokenRetrievalError,
    bex.SSOError,
    bex.UnauthorizedSSOTokenError,
    bex.ProfileNotFound,
    bex.UnknownCredentialError,
)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

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


def _bucket_problem(bucket: str) -> str | None:
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


def _key_problem(key: str) -> str | None:
    size = len(key.encode("utf-8", errors="surrogatepass"))
    if size > MAX_KEY_BYTES:
        return f"key is {size} bytes in UTF-8; S3 allows at most {MAX_KEY_BYTES}"
    return None


def parse_s3_uri(text: str, *, allow_prefix: bool = False) -> S3Uri:
    """Parse and validate ``s3://bucket/key``.

    Keys are taken literally (no percent-decoding), as ``aws s3`` does: spaces and non-ASCII are fine.
    With ``allow_prefix`` the key may be empty or end with ``/`` (a folder to list or write into).
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidURI(f"empty S3 URI {text!r}: expected s3://bucket/key")
    if not text.startswith(SCHEME):
        scheme = text.split("://", 1)[0] if "://" in text else None
        got = f"scheme {scheme!r}" if scheme is not None else "no scheme"
        raise InvalidURI(f"invalid S3 URI {text!r}: must start with 's3://' ({got})")
    bucket, _, key = text[len(SCHEME) :].partition("/")
    if not bucket:
        raise InvalidURI(f"invalid S3 URI {text!r}: bucket name is empty")
    problem = _bucket_problem(bucket)
    if problem:
        raise InvalidURI(f"invalid S3 URI {text!r}: bucket name {bucket!r} {problem}")
    if not allow_prefix and (key == "" or key.endswith("/")):
        what = "is empty" if key == "" else f"{key!r} ends with '/' (a folder, not an object)"
        raise InvalidURI(f"invalid S3 URI {text!r}: object key {what}")
    problem = _key_problem(key)
    if problem:
        raise InvalidURI(f"invalid S3 URI {_abbrev(text)!r}: {problem}")
    return S3Uri(bucket, key)


def _abbrev(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _strip_extension(name: str) -> str:
    # Only the last path segment loses its suffix: "a.b/c" stays "a.b/c", "x.tar.gz" becomes "x.tar",
    # and a dotfile (".hidden") has no extension to lose.
    suffix = PurePosixPath(name).suffix
    return name[: -len(suffix)] if suffix else name


def output_stem(input_uri: S3Uri, output_prefix: S3Uri, *, base_prefix: S3Uri | None = None) -> S3Uri:
    """Where a task's outputs go, without the format extension. The ONE place that decides the layout.

    ``{output_prefix}/{input key relative to base_prefix, or its basename}`` minus the input's
    extension. Deterministic, so a retried task overwrites its own outputs instead of adding new ones.
    """
    if input_uri.is_prefix:
        raise InvalidURI(f"input {input_uri} is a folder, not an object")
    if base_prefix is None:
        relative = input_uri.key.rsplit("/", 1)[-1]
    else:
        base_key = base_prefix.key if base_prefix.is_prefix else base_prefix.key + "/"
        if base_prefix.bucket != input_uri.bucket or not input_uri.key.startswith(base_key):
            raise InvalidURI(f"input {input_uri} is not under the base prefix {base_prefix}")
        relative = input_uri.key[len(base_key) :]
    stem = _strip_extension(relative)
    if not stem.strip("/"):
        raise InvalidURI(f"input {input_uri} leaves an empty output name")
    out = S3Uri(output_prefix.bucket, stem) if output_prefix.key.strip("/") == "" else output_prefix.join(stem)
    problem = _key_problem(out.key + ".json")  # the longest key this stem will get, give or take
    if problem:
        raise InvalidURI(f"output for {input_uri} under {output_prefix}: {problem}")
    return out


def output_uri(stem: S3Uri | str, fmt: str) -> S3Uri:
    base = stem if isinstance(stem, S3Uri) else parse_s3_uri(stem)
    uri = S3Uri(base.bucket, f"{base.key}.{fmt}")
    problem = _key_problem(uri.key)
    if problem:
        raise InvalidURI(f"output {_abbrev(str(uri))}: {problem}")
    return uri


def is_audio_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    suffix = PurePosixPath(name).suffix
    return bool(suffix) and suffix[1:].lower() in AUDIO_EXTENSIONS


def _error_code(exc: bex.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: bex.ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class S3Storage:
    """A boto3 S3 client built from :class:`S3Settings`, wrapped so that every failure is classified."""

    def __init__(self, settings: S3Settings, *, client=None) -> None:
        self.settings = settings
        self._client = client
        if client is None:
            try:
                self._client = self._build_client(settings)
            except _CREDENTIAL_ERRORS as exc:
                # Credentials that cannot be fetched right now (a failing credential_process, SSO
                # expired) must not stop the driver: the next call builds again and, failing, is
                # classified as a transient PresignError / StorageError.
                log.warning("S3 credentials unavailable, will retry on first use: %s: %s", type(exc).__name__, exc)

    @property
    def client(self):
        if self._client is None:
            self._client = self._build_client(self.settings)  # may raise a credential error; callers classify it
        return self._client

    @staticmethod
    def _build_client(settings: S3Settings):
        if settings.addressing_style not in ("path", "virtual", "auto"):
            raise ConfigError(f"s3.addressing_style must be 'path', 'virtual' or 'auto', got {settings.addressing_style!r}")
        config = Config(
            region_name=settings.region,
            signature_version="s3v4",
            s3={"addressing_style": settings.addressing_style},
            # botocore's own retries cover the driver's API calls (listing, bucket creation);
            # transfers on presigned URLs have no such layer: the orchestrator's policy owns those.
            retries={"mode": "standard"},
        )
        try:
            # A fresh Session so the standard credential chain (env, profile, SSO, IMDS...) is resolved here.
            return boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)
        except _CREDENTIAL_ERRORS:
            raise
        except (ValueError, bex.BotoCoreError) as exc:
            raise ConfigError(f"cannot build an S3 client (endpoint {settings.endpoint_url!r}): {exc}") from exc

    # --- presigning ---------------------------------------------------------------------------

    def _expiry(self, expires_s: int | None) -> int:
        expiry = self.settings.presign_expiry_s if expires_s is None else expires_s
        if not 1 <= expiry <= MAX_PRESIGN_EXPIRY_S:
            raise PresignError(
                f"presign expiry must be between 1 and {MAX_PRESIGN_EXPIRY_S} seconds, got {expiry}",
                transient=False,
            )
        return expiry

    def _presign(self, method: str, uri: S3Uri, params: dict, expires_s: int | None) -> str:
        expiry = self._expiry(expires_s)
        if uri.is_prefix:
            raise PresignError(f"cannot presign {method} for {uri}: the key is empty or a folder", transient=False)
        problem = _bucket_problem(uri.bucket)
        if problem:
            raise PresignError(f"cannot presign {method} for {uri}: bucket name {problem}", transient=False)
        problem = _key_problem(uri.key)
        if problem:
            raise PresignError(f"cannot presign {method} for {_abbrev(str(uri))}: {problem}", transient=False)
        try:
            return self.client.generate_presigned_url(
                method, Params={"Bucket": uri.bucket, "Key": uri.key, **params}, ExpiresIn=expiry
            )
        except _CREDENTIAL_ERRORS as exc:
            raise PresignError(
                f"cannot presign {method} for {uri}: AWS credentials unavailable ({type(exc).__name__}: {exc})",
                transient=True,
            ) from exc
        except (bex.ParamValidationError, bex.UnknownClientMethodError, bex.InvalidRegionError) as exc:
            raise PresignError(
                f"cannot presign {method} for {uri}: invalid parameters ({type(exc).__name__}: {exc})",
                transient=False,
            ) from exc
        except bex.BotoCoreError as exc:
            # Anything else from botocore while signing is about the environment, not the task.
            raise PresignError(
                f"cannot presign {method} for {uri}: {type(exc).__name__}: {exc}", transient=True
            ) from exc

    def presign_get(self, uri: S3Uri, *, expires_s: int | None = None) -> str:
        return self._presign("get_object", uri, {}, expires_s)

    def presign_put(self, uri: S3Uri, content_type: str, *, expires_s: int | None = None) -> str:
        """ContentType is signed, so the PUT must send exactly this ``Content-Type`` header."""
        return self._presign("put_object", uri, {"ContentType": content_type}, expires_s)

    def presign_task(
        self,
        input_uri: str,
        output_stem_uri: str,
        formats: Sequence[str],
        *,
        expires_s: int | None = None,
    ) -> tuple[str, tuple[OutputTarget, ...]]:
        """The GET URL of the input and one :class:`OutputTarget` per format.

        Anything wrong with the task's own URIs or formats is a permanent :class:`PresignError`.
        """
        try:
            source = parse_s3_uri(input_uri)
            stem = parse_s3_uri(output_stem_uri)
            unknown = [f for f in formats if f not in CONTENT_TYPES]
            if unknown or not formats:
                raise PresignError(
                    f"unknown output formats {unknown} (known: {sorted(CONTENT_TYPES)})"
                    if unknown
                    else "no output formats requested",
                    transient=False,
                )
            outputs = [(fmt, output_uri(stem, fmt)) for fmt in dict.fromkeys(formats)]
        except InvalidURI as exc:
            raise PresignError(f"cannot presign task: {exc}", transient=False) from exc
        get_url = self.presign_get(source, expires_s=expires_s)
        targets = tuple(
            OutputTarget(
                format=fmt,
                put_url=self.presign_put(uri, CONTENT_TYPES[fmt], expires_s=expires_s),
                uri=str(uri),
                content_type=CONTENT_TYPES[fmt],
            )
            for fmt, uri in outputs
        )
        return get_url, targets

    # --- listing and buckets ------------------------------------------------------------------

    def list_audio(self, prefix: S3Uri, *, page_size: int = 1000) -> Iterator[S3Uri]:
        """Every audio object (by extension) under ``prefix``, page by page, in key order.

        A non-empty key without a trailing ``/`` is treated as a folder: listing ``audio`` must
        not pick up ``audio2/``.
        """
        key = prefix.key if prefix.is_prefix else prefix.key + "/"
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=prefix.bucket, Prefix=key, PaginationConfig={"PageSize": page_size})
            for page in pages:
                for obj in page.get("Contents", ()):
                    if is_audio_key(obj["Key"]):
                        yield S3Uri(prefix.bucket, obj["Key"])
        except bex.ClientError as exc:
            code, status = _error_code(exc), _http_status(exc)
            if code == "NoSuchBucket":
                raise InvalidURI(f"cannot list {prefix}: bucket {prefix.bucket!r} does not exist") from exc
            # Access denied will not fix itself; throttling and 5xx that outlived botocore's retries might.
            transient = code not in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch")
            raise StorageError(
                f"cannot list {prefix}: {status} {code}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": "),
                http_status=status,
                transient=transient,
            ) from exc
        except _CREDENTIAL_ERRORS as exc:
            raise StorageError(f"cannot list {prefix}: AWS credentials unavailable ({exc})") from exc
        except bex.ParamValidationError as exc:
            raise StorageError(f"cannot list {prefix}: invalid parameters ({exc})", transient=False) from exc
        except bex.BotoCoreError as exc:
            raise StorageError(f"cannot list {prefix}: {type(exc).__name__}: {exc}") from exc

    def ensure_bucket(self, name: str) -> None:
        """Create the bucket unless we already own it (demo and tests)."""
        problem = _bucket_problem(name)
        if problem:
            raise InvalidURI(f"bucket name {name!r} {problem}")
        params: dict = {"Bucket": name}
        if self.settings.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            self.client.create_bucket(**params)
            log.info("created bucket %s", name)
        except bex.ClientError as exc:
            code = _error_code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                # Ours in some setups (moto, us-east-1 legacy); head_bucket settles whether we may use it.
                try:
                    self.client.head_bucket(Bucket=name)
                    return
                except bex.ClientError as head_exc:
                    raise StorageError(
                        f"bucket {name!r} exists and is not ours: {_http_status(head_exc)}",
                        http_status=_http_status(head_exc),
                        transient=False,
                    ) from head_exc
            raise StorageError(
                f"cannot create bucket {name!r}: {_http_status(exc)} {code}", http_status=_http_status(exc)
            ) from exc
        except bex.BotoCoreError as exc:
            raise StorageError(f"cannot create bucket {name!r}: {type(exc).__name__}: {exc}") from exc
