"""S3 on the driver side: presigned URLs and listing (URI rules and the output layout: :mod:`raytranscribe.uris`).

This is the only module that holds AWS credentials. Workers get presigned URLs and nothing else
(see :mod:`raytranscribe.transfer`). Imports boto3; never ray, the store or requests.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

import boto3
import botocore.exceptions as bex
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.utils import percent_encode

from raytranscribe.config import S3Settings
from raytranscribe.contracts import ModelFile, ModelLayout, ModelManifest, OutputTarget, pick_model_files
from raytranscribe.errors import ConfigError, InvalidURI, ModelNotFound, PresignError, StorageError
from raytranscribe.uris import S3Uri, is_audio_key, output_uri, parse_s3_uri
from raytranscribe.uris import SCHEME
# Under the names the presign methods use.
from raytranscribe.uris import abbrev as _abbrev
from raytranscribe.uris import bucket_problem as _bucket_problem
from raytranscribe.uris import key_problem as _key_problem

log = logging.getLogger(__name__)

# How long model_for_actor hands the same signed manifest to new actors.
MODEL_MANIFEST_REUSE_S = 60.0
# SigV4 presigned URLs are valid for at most seven days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600

CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "txt": "text/plain; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}

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
class _UrlTemplate:
    """What every presigned URL of one (method, bucket) shares: read off one made the full way."""

    http_method: str
    prefix: str  # the URL up to the key: endpoint, addressing style and bucket as botocore resolved them
    region: str  # the signing region botocore chose
    host: str  # the Host header botocore signs for that URL


# Signers of one presign_task call, by (region, expiry): its URLs share one, built with the credentials
# of the moment (refreshable credentials may change between calls, never within one).
_Auths = dict[tuple[str, int], S3SigV4QueryAuth]


def _error_code(exc: bex.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: bex.ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class S3Storage:
    """A boto3 S3 client built from :class:`S3Settings`, wrapped so that every failure is classified."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._client = None
        self._manifests: dict[tuple[str, str], tuple[float, ModelManifest]] = {}  # model_for_actor's
        # (method, bucket, signs a content type) -> how its URLs look; None: no shortcut for it
        self._templates: dict[tuple[str, str, bool], _UrlTemplate | None] = {}
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

    def _presign(
        self, method: str, uri: S3Uri, params: dict, expires_s: int | None, auths: _Auths | None = None
    ) -> str:
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
            return self._sign(method, uri, params, expiry, {} if auths is None else auths)
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

    def _sign(self, method: str, uri: S3Uri, params: dict, expiry: int, auths: _Auths) -> str:
        """A presigned URL, signed by botocore's own SigV4 query signer.

        ``generate_presigned_url`` validates parameters, resolves the endpoint through its rule set
        and serialises a request for every URL: most of its cost, and the same for every key of a
        bucket. So the first URL of a (method, bucket, signed headers) is made that way, and its
        address up to the key and its Host header are kept; later URLs put the key where botocore
        puts it (percent-encoded as its serializer does) and go straight to the signer, one signer
        for all the URLs of a call, given the Host header it would otherwise parse out of each URL.
        Anything the shortcut does not cover (extra query parameters, other signed headers) takes
        the full path every time.
        """
        content_type = params.get("ContentType")
        if set(params) - {"ContentType"} or (content_type is not None and not isinstance(content_type, str)):
            return self._sign_slowly(method, uri, params, expiry)
        key = (method, uri.bucket, content_type is not None)
        if key not in self._templates:
            template, url = self._template(method, uri, params, expiry)
            self._templates[key] = template
            return url
        template = self._templates[key]
        if template is None:
            return self._sign_slowly(method, uri, params, expiry)
        headers = {"host": template.host}
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = AWSRequest(
            method=template.http_method, url=template.prefix + percent_encode(uri.key, safe="/~"), headers=headers
        )
        self._auth(template.region, expiry, auths).add_auth(request)  # writes the signed URL into request.url
        return request.url

    def _auth(self, region: str, expiry: int, auths: _Auths) -> S3SigV4QueryAuth:
        auth = auths.get((region, expiry))
        if auth is None:
            auth = auths[region, expiry] = self.client._request_signer.get_auth_instance(
                signing_name="s3", region_name=region, signature_version="s3v4-query", expires=expiry
            )
        return auth

    def _sign_slowly(self, method: str, uri: S3Uri, params: dict, expiry: int) -> str:
        return self.client.generate_presigned_url(
            method, Params={"Bucket": uri.bucket, "Key": uri.key, **params}, ExpiresIn=expiry
        )

    def _template(self, method: str, uri: S3Uri, params: dict, expiry: int) -> tuple[_UrlTemplate | None, str]:
        """Sign ``uri`` the full way and read from the URL what the shortcut needs, if it can."""
        url = self._sign_slowly(method, uri, params, expiry)
        base, _, query = url.partition("?")
        encoded = percent_encode(uri.key, safe="/~")
        fields = dict(parse_qsl(query, keep_blank_values=True))
        scope = fields.get("X-Amz-Credential", "").split("/")
        expected = {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
                    "X-Amz-Signature", "X-Amz-Security-Token"}  # fmt: skip
        signed = "content-type;host" if "ContentType" in params else "host"
        if (
            not base.endswith("/" + encoded)
            or set(fields) - expected
            or fields.get("X-Amz-SignedHeaders") != signed
            or len(scope) != 5
            or scope[3] != "s3"
        ):
            return None, url
        http_method = "PUT" if method == "put_object" else "GET"
        host = self._auth(scope[2], expiry, {}).headers_to_sign(AWSRequest(method=http_method, url=base))["host"]
        return _UrlTemplate(http_method, base[: -len(encoded)], scope[2], host), url

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
        auths: _Auths = {}  # one signer for the task's URLs
        get_url = self._presign("get_object", source, {}, expires_s, auths)
        targets = tuple(
            OutputTarget(
                format=fmt,
                put_url=self._presign("put_object", uri, {"ContentType": CONTENT_TYPES[fmt]}, expires_s, auths),
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
            if _error_code(exc) == "NoSuchBucket":
                raise InvalidURI(f"cannot list {prefix}: bucket {prefix.bucket!r} does not exist") from exc
            raise _s3_call_error(exc, f"cannot list {prefix}") from exc
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

    # --- whole files (the driver's own uploads: an export) ----------------------------------------

    def check_writable(self, uri: S3Uri) -> None:
        """Fail before a long job writes anything when ``uri``'s bucket does not exist (InvalidURI) or
        refuses us (StorageError); a bucket that answers may still refuse the upload itself."""
        try:
            self.client.head_bucket(Bucket=uri.bucket)
        except bex.ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchBucket"):
                raise InvalidURI(f"cannot write {_abbrev(str(uri))}: bucket {uri.bucket!r} does not exist") from exc
            raise _s3_call_error(exc, f"cannot write {_abbrev(str(uri))}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise StorageError(f"cannot write {_abbrev(str(uri))}: AWS credentials unavailable ({exc})") from exc
        except bex.BotoCoreError as exc:
            raise StorageError(f"cannot write {_abbrev(str(uri))}: {type(exc).__name__}: {exc}") from exc

    def upload_file(self, path: str, uri: S3Uri, content_type: str) -> None:
        """Upload a finished local file to ``uri`` (multipart when it is big). S3 shows the object only
        once the upload completes, so a failed upload leaves nothing at ``uri``."""
        from boto3.exceptions import S3UploadFailedError

        try:
            self.client.upload_file(path, uri.bucket, uri.key, ExtraArgs={"ContentType": content_type})
        except bex.ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise InvalidURI(f"cannot write {_abbrev(str(uri))}: bucket {uri.bucket!r} does not exist") from exc
            raise _s3_call_error(exc, f"cannot write {_abbrev(str(uri))}") from exc
        except S3UploadFailedError as exc:  # boto3's transfer manager wraps the ClientError in words
            if "NoSuchBucket" in str(exc):
                raise InvalidURI(f"cannot write {_abbrev(str(uri))}: bucket {uri.bucket!r} does not exist") from exc
            raise StorageError(f"cannot write {_abbrev(str(uri))}: {exc}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise StorageError(f"cannot write {_abbrev(str(uri))}: AWS credentials unavailable ({exc})") from exc
        except bex.BotoCoreError as exc:
            raise StorageError(f"cannot write {_abbrev(str(uri))}: {type(exc).__name__}: {exc}") from exc
        log.info("uploaded %s", uri)

    # --- models -------------------------------------------------------------------------------

    def model_for_actor(self, engine: str, model: str) -> ModelManifest | None:
        """What a worker actor serving ``(engine, model)`` is handed to fetch its model, signed afresh
        for each actor start: a manifest for an ``s3://`` model, None for any other (bundled, local
        path, Hub id: the engine finds those itself)."""
        if not model.startswith(SCHEME):
            return None
        now = time.monotonic()
        cached = self._manifests.get((engine, model))
        if cached is not None and cached[0] > now:
            return cached[1]
        manifest = self.model_files(model, layout=ModelLayout.for_engine(engine))
        # Reused briefly, so a pool starting many actors at once lists and signs once; briefly, so a
        # model replaced in S3 reaches new actors soon (the cache key has the new ETags).
        self._manifests[(engine, model)] = (now + MODEL_MANIFEST_REUSE_S, manifest)
        return manifest

    def model_files(
        self, uri: str, *, layout: ModelLayout | None = None, expires_s: int | None = None
    ) -> ModelManifest:
        """The model stored at ``uri`` as a worker may fetch it: the files its layout needs, each with
        size, ETag and a presigned GET (the worker holds no credentials).

        ``uri`` is a folder (``s3://bucket/prefix/``; a key without the trailing ``/`` counts as one) or
        a single ``.pt`` checkpoint. ``layout`` None detects it from the files (plugin engines).
        Raises :class:`ModelNotFound` naming what is missing (submit refuses it, exit 2), InvalidURI for
        a malformed URI, StorageError when S3 cannot be listed.
        """
        parsed = parse_s3_uri(uri, allow_prefix=True)
        single = not parsed.is_prefix and parsed.key.endswith(".pt")
        if single:
            folder = parsed.key.rpartition("/")[0] + "/" if "/" in parsed.key else ""
        else:
            folder = parsed.key if parsed.is_prefix or not parsed.key else parsed.key + "/"
        where = str(parsed) if parsed.is_prefix or single else str(parsed) + "/"
        try:
            objects: dict[str, dict] = {}
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=parsed.bucket, Prefix=folder, Delimiter="/"  # direct children only
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    objects[obj["Key"][len(folder) :]] = obj
            if single:
                name = parsed.key[len(folder) :]
                objects = {name: objects[name]} if name in objects else {}
            if not objects:
                raise ModelNotFound(f"model {where}: no such object" if single else f"model {where}: no files under it")
            layout, names = pick_model_files(objects, layout, where)
            files = tuple(self._model_file(parsed.bucket, folder + n, n, objects[n], expires_s) for n in names)
        except bex.ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                raise ModelNotFound(f"model {where}: bucket {parsed.bucket!r} does not exist") from exc
            raise _s3_call_error(exc, f"cannot list model {where}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise StorageError(f"cannot list model {where}: AWS credentials unavailable ({exc})") from exc
        except bex.BotoCoreError as exc:
            raise StorageError(f"cannot list model {where}: {type(exc).__name__}: {exc}") from exc
        log.debug("model %s: %d files, %d bytes", where, len(files), sum(f.size for f in files))
        return ModelManifest(uri=where, layout=layout, files=files)

    def _model_file(self, bucket: str, key: str, name: str, listed: dict, expires_s: int | None) -> ModelFile:
        etag = str(listed.get("ETag", "")).strip().strip('"').lower()
        # A single-part ETag is the content's MD5 unless the object is KMS- or customer-key encrypted;
        # listing does not say which, so ask (one HEAD per file, at submit and actor start only).
        head = self.client.head_object(Bucket=bucket, Key=key)
        encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or "SSECustomerAlgorithm" in head
        md5 = etag if _MD5_HEX.fullmatch(etag) and not encrypted else None
        url = self.presign_get(S3Uri(bucket, key), expires_s=expires_s)
        return ModelFile(name=name, url=url, size=int(listed["Size"]), etag=etag, md5=md5)


_MD5_HEX = re.compile(r"[0-9a-f]{32}")


# S3 error codes that will not fix themselves; throttling and 5xx that outlived botocore's retries might.
_REFUSALS = frozenset({"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


def _s3_call_error(exc: bex.ClientError, what: str) -> StorageError:
    """A driver-side S3 call's ClientError: permanent for refusals, transient for what may pass (throttling, 5xx)."""
    code, status = _error_code(exc), _http_status(exc)
    transient = code not in _REFUSALS
    message = exc.response.get("Error", {}).get("Message", "")
    return StorageError(f"{what}: {status} {code}: {message}".rstrip(": "), http_status=status, transient=transient)
