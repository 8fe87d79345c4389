"""Driver-side S3: presigning (and its failures), listing, through moto. URI rules: test_uris.py."""

from __future__ import annotations

import socket
import stat
import uuid

import botocore.exceptions as bex
import pytest

from raytranscribe.config import S3Settings
from raytranscribe.errors import ConfigError, InvalidURI, PresignError, Stage, StorageError
from raytranscribe.storage import CONTENT_TYPES, S3Storage
from raytranscribe.uris import S3Uri, parse_s3_uri

# --- content types ---------------------------------------------------------------------------------


def test_content_types():
    assert CONTENT_TYPES == {
        "json": "application/json",
        "srt": "application/x-subrip",
        "vtt": "text/vtt",
        "txt": "text/plain; charset=utf-8",
        "tsv": "text/tab-separated-values; charset=utf-8",
    }


# --- the client and presigning ---------------------------------------------------------------------


def test_client_follows_settings(local_s3):
    storage = S3Storage(S3Settings(region="eu-west-1", addressing_style="virtual"))
    assert storage.client.meta.region_name == "eu-west-1"
    assert storage.client.meta.config.retries["mode"] == "standard"
    url = storage.presign_get(S3Uri("my-bkt", "a b/c.wav"), expires_s=900)
    assert url.startswith("https://my-bkt.s3.eu-west-1.amazonaws.com/a%20b/c.wav?")
    assert "X-Amz-Expires=900&" in url

    path_style = S3Storage(S3Settings(endpoint_url="http://127.0.0.1:9000", addressing_style="path"))
    assert path_style.presign_get(S3Uri("my-bkt", "c.wav")).startswith("http://127.0.0.1:9000/my-bkt/c.wav?")


def test_bad_addressing_style_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        S3Storage(S3Settings(addressing_style="sideways"))
    assert str(info.value) == "s3.addressing_style must be 'path', 'virtual' or 'auto', got 'sideways'"


def test_presign_put_signs_the_content_type(storage):
    url = storage.presign_put(S3Uri("out-bkt", "r/a.srt"), "application/x-subrip")
    assert "X-Amz-SignedHeaders=content-type%3Bhost" in url
    assert f"X-Amz-Expires={S3Settings().presign_expiry_s}&" in url  # the settings' default
    get = storage.presign_get(S3Uri("in-bkt", "a.wav"))
    assert "X-Amz-SignedHeaders=host" in get


def test_presign_task_gives_one_target_per_format(storage):
    get_url, targets = storage.presign_task("s3://in-bkt/x/a.wav", "s3://out-bkt/r/a", ["srt", "json", "srt"])
    assert get_url.startswith(f"{storage.settings.endpoint_url}/in-bkt/x/a.wav?")
    assert [(t.format, t.uri, t.content_type) for t in targets] == [
        ("srt", "s3://out-bkt/r/a.srt", "application/x-subrip"),
        ("json", "s3://out-bkt/r/a.json", "application/json"),
    ]
    assert targets[0].put_url.startswith(f"{storage.settings.endpoint_url}/out-bkt/r/a.srt?")


def test_missing_credentials_is_a_transient_presign_error(s3_settings, no_aws_credentials):
    storage = S3Storage(s3_settings)
    with pytest.raises(PresignError) as info:
        storage.presign_task("s3://in-bkt/a.wav", "s3://out-bkt/a", ["json"])
    err = info.value
    assert (err.transient, err.stage, err.http_status) == (True, Stage.PRESIGN, None)
    assert str(err) == (
        "cannot presign get_object for s3://in-bkt/a.wav: AWS credentials unavailable "
        "(NoCredentialsError: Unable to locate credentials)"
    )
    assert isinstance(err.__cause__, bex.NoCredentialsError)


def test_credential_provider_failure_is_transient_and_recovers(s3_settings, tmp_path, monkeypatch):
    # The real credential chain, through a credential_process that fails, then works.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    helper = tmp_path / "creds.sh"
    helper.write_text("#!/bin/sh\necho 'credential helper unavailable' >&2\nexit 3\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = {helper}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    storage = S3Storage(s3_settings)  # does not raise: credentials may come back
    with pytest.raises(PresignError) as info:
        storage.presign_get(S3Uri("in-bkt", "a.wav"))
    err = info.value
    assert (err.transient, err.stage) == (True, Stage.PRESIGN)
    assert str(err).startswith("cannot presign get_object for s3://in-bkt/a.wav: AWS credentials unavailable (CredentialRetrievalError: ")
    assert "credential helper unavailable" in str(err)
    assert isinstance(err.__cause__, bex.CredentialRetrievalError)

    helper.write_text('#!/bin/sh\necho \'{"Version": 1, "AccessKeyId": "AKIDBACK", "SecretAccessKey": "s"}\'\n')
    url = storage.presign_get(S3Uri("in-bkt", "a.wav"))
    assert "X-Amz-Credential=AKIDBACK%2F" in url


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s: s.presign_get(S3Uri("Bad_Bucket", "a.wav")),
            "cannot presign get_object for s3://Bad_Bucket/a.wav: bucket name may contain only lowercase letters, "
            "digits, dots and hyphens (found 'B', '_')",
        ),
        (lambda s: s.presign_get(S3Uri("bkt", "")), "cannot presign get_object for s3://bkt/: the key is empty or a folder"),
        (
            lambda s: s.presign_get(S3Uri("bkt", "a.wav"), expires_s=8 * 24 * 3600),
            "presign expiry must be between 1 and 604800 seconds, got 691200",
        ),
        (lambda s: s.presign_get(S3Uri("bkt", "a.wav"), expires_s=0), "presign expiry must be between 1 and 604800 seconds, got 0"),
        (
            lambda s: s.presign_task("s3://in-bkt/a.wav", "s3://out-bkt/a", ["docx"]),
            "unknown output formats ['docx'] (known: ['json', 'srt', 'tsv', 'txt', 'vtt'])",
        ),
        (lambda s: s.presign_task("s3://in-bkt/a.wav", "s3://out-bkt/a", []), "no output formats requested"),
        (
            lambda s: s.presign_task("https://in-bkt/a.wav", "s3://out-bkt/a", ["json"]),
            "cannot presign task: invalid S3 URI 'https://in-bkt/a.wav': must start with 's3://' (scheme 'https')",
        ),
        (
            lambda s: s.presign_task("s3://in-bkt/a.wav", "s3://out-bkt/", ["json"]),
            "cannot presign task: invalid S3 URI 's3://out-bkt/': object key is empty",
        ),
    ],
)
def test_invalid_parameters_are_a_permanent_presign_error(storage, call, message):
    with pytest.raises(PresignError) as info:
        call(storage)
    assert str(info.value) == message
    assert (info.value.transient, info.value.stage) == (False, Stage.PRESIGN)


def test_botocore_param_validation_is_permanent(storage):
    with pytest.raises(PresignError) as info:
        storage.presign_put(S3Uri("bkt", "a.json"), 123)  # type: ignore[arg-type]
    assert info.value.transient is False
    assert str(info.value).startswith("cannot presign put_object for s3://bkt/a.json: invalid parameters (ParamValidationError: ")
    assert isinstance(info.value.__cause__, bex.ParamValidationError)


def test_presign_task_wraps_invalid_uri_as_cause(storage):
    with pytest.raises(PresignError) as info:
        storage.presign_task("s3://in-bkt/", "s3://out-bkt/a", ["json"])
    assert isinstance(info.value.__cause__, InvalidURI)
    assert str(info.value.__cause__) == "invalid S3 URI 's3://in-bkt/': object key is empty"


def test_presign_refuses_dot_and_empty_segments(storage):
    """Defence in depth for rows stored before these keys were refused: no presigned URL ever holds one."""
    for key in ("dd/../evil/x.wav", "./x.wav", "a/.", "a//b.wav"):
        with pytest.raises(PresignError) as info:
            storage.presign_get(S3Uri("in-bkt", key))
        assert info.value.transient is False and "segment" in str(info.value), key
    with pytest.raises(PresignError) as info:
        storage.presign_task("s3://in-bkt/a.wav", "s3://out-bkt/a/../../in-bkt/x", ["json"])
    assert str(info.value) == (
        "cannot presign task: invalid S3 URI 's3://out-bkt/a/../../in-bkt/x': key 'a/../../in-bkt/x' has a '..' "
        "segment, which HTTP clients resolve to another object"
    )
    assert info.value.transient is False


# Legal keys HTTP clients might be tempted to rewrite: dots inside segments, percent signs, reserved characters.
ODD_KEYS = ["a/.../b c.wav", ".x./..y/z..", "%2e%2e/%2F..%2f/x.wav", "a+b/~!$&'()*,;=:@/é.wav", "x\\..\\y.wav"]


def test_transfers_request_exactly_the_signed_path(s3_settings, fault_server, tmp_path):
    """With dot segments refused, what requests/urllib3 send is the path that was signed, for every key left.
    (They do rewrite dot segments, which is why those are refused: see the first assertion.)"""
    import requests

    from raytranscribe.config import TransferSettings
    from raytranscribe.transfer import Transfer
    from tests.support.transfer import downloading

    assert requests.Request("GET", "http://h/in-bkt/dd/../evil/x.wav").prepare().path_url == "/in-bkt/evil/x.wav"

    storage = S3Storage(s3_settings.model_copy(update={"endpoint_url": fault_server.url("/").rstrip("/")}))
    with Transfer(TransferSettings()) as transfer:
        for n, key in enumerate(ODD_KEYS):
            body = f"object {n}".encode()
            fault_server.put_object(f"/in-bkt/{key}", body)
            get_url = storage.presign_get(S3Uri("in-bkt", key))
            with downloading(transfer, get_url, tmp_path / str(n), "x.wav") as got:
                assert got.path.read_bytes() == body, key
            put_url = storage.presign_put(S3Uri("out-bkt", key + ".json"), "application/json")
            transfer.upload(put_url, body, "application/json")
            assert fault_server.get_object(f"/out-bkt/{key}.json").body == body, key
    signed = [f"/in-bkt/{k}" for k in ODD_KEYS]
    assert [r.path for r in fault_server.requests if r.method == "GET"] == signed
    assert [r.path for r in fault_server.requests if r.method == "PUT"] == [f"/out-bkt/{k}.json" for k in ODD_KEYS]


# --- listing and buckets ---------------------------------------------------------------------------

SPECIAL_AUDIO = [
    "calls/nested/deep/x y.mp3",
    "calls/ünïcødé/会议 录音.m4a",
    "calls/upper.WAV",
    "calls/v1.2/take.one/clip.final.ogg",
]
SPECIAL_OTHER = ["calls/readme.txt", "calls/notes.json", "calls/dir.wav/inner.txt", "calls/noext", "calls2/outside.wav"]


def test_list_audio_pages_through_thousands_and_skips_non_audio(local_s3, s3_client, storage, bucket):
    # 2,500 objects straight into moto (HTTP PUTs would take ~10 s); the special keys go over HTTP.
    local_s3.seed_objects(bucket, {f"calls/batch/{i:05d}.wav": b"" for i in range(2500)})
    local_s3.seed_objects(bucket, {f"calls/batch/{i:05d}.txt": b"" for i in range(300)})
    for key in SPECIAL_AUDIO + SPECIAL_OTHER:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")

    listed = list(storage.list_audio(S3Uri(bucket, "calls")))  # no trailing slash: still the folder
    expected = {f"calls/batch/{i:05d}.wav" for i in range(2500)} | set(SPECIAL_AUDIO)
    assert len(listed) == 2504  # more than two full pages of 1,000, no duplicates
    assert {u.key for u in listed} == expected
    assert {u.bucket for u in listed} == {bucket}

    nested = list(storage.list_audio(parse_s3_uri(f"s3://{bucket}/calls/ünïcødé/", allow_prefix=True)))
    assert nested == [S3Uri(bucket, "calls/ünïcødé/会议 录音.m4a")]
    small_pages = list(storage.list_audio(S3Uri(bucket, "calls/nested/"), page_size=1))
    assert small_pages == [S3Uri(bucket, "calls/nested/deep/x y.mp3")]
    whole = {u.key for u in storage.list_audio(S3Uri(bucket, ""))}
    assert whole == expected | {"calls2/outside.wav"}


def test_list_missing_bucket_is_invalid_uri(storage):
    name = f"rt-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidURI) as info:
        list(storage.list_audio(S3Uri(name, "x/")))
    assert str(info.value) == f"cannot list s3://{name}/x/: bucket '{name}' does not exist"
    assert isinstance(info.value.__cause__, bex.ClientError)


def test_list_with_the_endpoint_down_is_a_transient_storage_error(s3_settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = S3Storage(s3_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}"}))
    with pytest.raises(StorageError) as info:
        list(storage.list_audio(S3Uri("bkt", "in/")))
    err = info.value
    assert (err.transient, err.stage) == (True, Stage.PRESIGN)
    assert str(err).startswith(f'cannot list s3://bkt/in/: EndpointConnectionError: Could not connect to the endpoint URL: "http://127.0.0.1:{port}/bkt?')
    assert isinstance(err.__cause__, bex.EndpointConnectionError)


def test_ensure_bucket_is_idempotent(storage, s3_client):
    name = f"rt-ensure-{uuid.uuid4().hex[:8]}"
    storage.ensure_bucket(name)
    storage.ensure_bucket(name)
    assert name in {b["Name"] for b in s3_client.list_buckets()["Buckets"]}
    with pytest.raises(InvalidURI) as info:
        storage.ensure_bucket("Not_A_Bucket")
    assert str(info.value) == (
        "bucket name 'Not_A_Bucket' may contain only lowercase letters, digits, dots and hyphens (found 'A', 'B', 'N', '_')"
    )


# --- models ----------------------------------------------------------------------------------------

CT2_FILES = {
    "model.bin": b"weights" * 100,
    "config.json": b"{}",
    "tokenizer.json": b"{}",
    "vocabulary.txt": b"a\nb\n",
    "preprocessor_config.json": b"{}",
}


def _put_model(s3_client, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        s3_client.put_object(Bucket=bucket, Key=prefix + name, Body=body)


def test_model_files_lists_presigns_and_skips_what_the_model_does_not_need(storage, s3_client, bucket):
    import hashlib

    import requests

    from raytranscribe.contracts import ModelLayout

    _put_model(s3_client, bucket, "m/tiny/", {**CT2_FILES, "README.md": b"notes", "sub/model.bin": b"other"})
    manifest = storage.model_files(f"s3://{bucket}/m/tiny")  # no trailing slash: still the folder
    assert (manifest.uri, manifest.layout) == (f"s3://{bucket}/m/tiny/", ModelLayout.CTRANSLATE2)
    assert [f.name for f in manifest.files] == [
        "model.bin", "config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json"]  # fmt: skip
    for f in manifest.files:
        body = CT2_FILES[f.name]
        assert (f.size, f.etag, f.md5) == (len(body), hashlib.md5(body).hexdigest(), hashlib.md5(body).hexdigest())
        assert requests.get(f.url, timeout=10).content == body  # a presigned GET: no credentials needed
    assert manifest.total_bytes == sum(map(len, CT2_FILES.values()))


@pytest.mark.parametrize(
    ("files", "layout", "message"),
    [
        ({k: v for k, v in CT2_FILES.items() if k != "tokenizer.json"}, "ctranslate2",
         "has no tokenizer.json (a CTranslate2 model needs model.bin, config.json, tokenizer.json and vocabulary.json or vocabulary.txt)"),
        ({k: v for k, v in CT2_FILES.items() if k != "vocabulary.txt"}, "ctranslate2",
         "has no vocabulary.json or vocabulary.txt (CTranslate2 needs its vocabulary)"),
        ({"notes.txt": b"x"}, None,
         "holds no model: neither model.bin (CTranslate2) nor a .pt checkpoint (openai-whisper)"),
        ({"a.pt": b"1", "b.pt": b"2"}, "checkpoint", "holds 2 .pt checkpoints (a.pt, b.pt): name one of them as the model"),
        (CT2_FILES, "checkpoint", "has no .pt checkpoint (openai-whisper needs exactly one)"),
    ],
)  # fmt: skip
def test_model_files_names_what_is_missing(storage, s3_client, bucket, files, layout, message):
    from raytranscribe.contracts import ModelLayout
    from raytranscribe.errors import InvalidInput, ModelLoadError, ModelNotFound

    _put_model(s3_client, bucket, "m/", files)
    with pytest.raises(ModelNotFound) as info:
        storage.model_files(f"s3://{bucket}/m/", layout=ModelLayout(layout) if layout else None)
    assert str(info.value) == f"model s3://{bucket}/m/ {message}"
    # A user's typo at submit time (exit 2), a model-load failure if an actor meets it.
    assert isinstance(info.value, InvalidInput) and isinstance(info.value, ModelLoadError)
    assert (info.value.stage, info.value.transient) == (Stage.MODEL_LOAD, False)


def test_model_files_of_an_empty_prefix_a_missing_bucket_and_a_single_checkpoint(storage, s3_client, bucket):
    from raytranscribe.contracts import ModelLayout
    from raytranscribe.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match=rf"^model s3://{bucket}/nothing/: no files under it$"):
        storage.model_files(f"s3://{bucket}/nothing/")
    with pytest.raises(ModelNotFound, match=r"^model s3://rt-no-such-bucket-zz/m/: bucket 'rt-no-such-bucket-zz' does not exist$"):
        storage.model_files("s3://rt-no-such-bucket-zz/m/")
    _put_model(s3_client, bucket, "ckpt/", {"small.pt": b"torch", "small.pt.bak": b"old"})
    manifest = storage.model_files(f"s3://{bucket}/ckpt/small.pt")
    assert (manifest.layout, [f.name for f in manifest.files], manifest.load_name) == (
        ModelLayout.CHECKPOINT, ["small.pt"], "small.pt")  # fmt: skip
    assert storage.model_files(f"s3://{bucket}/ckpt/").files[0].name == "small.pt"  # detected
    with pytest.raises(ModelNotFound, match=rf"^model s3://{bucket}/ckpt/missing.pt: no such object$"):
        storage.model_files(f"s3://{bucket}/ckpt/missing.pt")
    with pytest.raises(InvalidURI):
        storage.model_files("https://example.com/model/")


def test_model_for_actor_signs_s3_models_only(storage, s3_client, bucket, monkeypatch):
    import time

    from raytranscribe import storage as storage_module
    from raytranscribe.contracts import ModelLayout

    # A short reuse window (it is read when a listing is cached), long enough for the two calls below.
    monkeypatch.setattr(storage_module, "MODEL_MANIFEST_REUSE_S", 3.0)
    _put_model(s3_client, bucket, "m/", CT2_FILES)
    manifest = storage.model_for_actor("faster-whisper", f"s3://{bucket}/m/")
    assert manifest is not None and manifest.layout is ModelLayout.CTRANSLATE2 and len(manifest.files) == 5
    # Actors started together share one listing; a model replaced in S3 reaches actors started later.
    s3_client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"changed": true}')
    assert storage.model_for_actor("faster-whisper", f"s3://{bucket}/m/") is manifest
    # The same storage, once the window has passed, lists again and sees the replaced file.
    deadline = time.monotonic() + 30
    while (fresh := storage.model_for_actor("faster-whisper", f"s3://{bucket}/m/")) is manifest:
        assert time.monotonic() < deadline, "the cached listing was still handed out 30 s later"
        time.sleep(0.1)
    assert {f.name: f.size for f in fresh.files}["config.json"] == len(b'{"changed": true}')
    assert {f.name: f.size for f in manifest.files}["config.json"] != len(b'{"changed": true}')
    assert storage.model_for_actor("faster-whisper", "tiny.en") is None
    assert storage.model_for_actor("openai-whisper", "/models/small.pt") is None


# --- presigning's shortcut past generate_presigned_url ---------------------------------------------

PRESIGN_KEYS = ["a.wav", "a b/c.wav", "ünïcødé/会议 录音.m4a", "a+b/~!$&'()*,;=:@/é.wav", "%2e%2e/%2F..%2f/x.wav", "x\\y.wav"]


@pytest.mark.parametrize(
    "settings",
    [
        S3Settings(endpoint_url="http://127.0.0.1:9000", addressing_style="path"),
        S3Settings(region="eu-west-1", addressing_style="virtual"),
        S3Settings(region="us-west-2", addressing_style="auto"),
        S3Settings(region="us-east-1", addressing_style="path"),
    ],
    ids=["endpoint-path", "aws-virtual", "aws-auto", "aws-us-east-1-path"],
)
def test_presigned_urls_are_exactly_what_generate_presigned_url_makes(settings, monkeypatch):
    """The same clock gives the same URL, byte for byte, for every key, method and addressing style."""
    import datetime

    import botocore.auth

    from tests.support.spy import record_calls

    frozen = datetime.datetime(2026, 12, 1, 12, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: frozen)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session/token+with=odd chars")
    storage = S3Storage(settings)
    reference = S3Storage(settings).client  # a client of its own, built the same way: not watched below
    signed_slowly = record_calls(monkeypatch, storage.client, "generate_presigned_url")
    for key in PRESIGN_KEYS * 2:  # the second round takes the shortcut for every bucket
        for bucket in ("in-bkt", "my.dotted.bkt"):
            uri = S3Uri(bucket, key)
            assert storage.presign_get(uri, expires_s=900) == reference.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=900
            ), (bucket, key)
            assert storage.presign_put(uri, "text/vtt") == reference.generate_presigned_url(
                "put_object", Params={"Bucket": bucket, "Key": key, "ContentType": "text/vtt"},
                ExpiresIn=settings.presign_expiry_s,
            ), (bucket, key)
    # Only the first URL of each (method, bucket) went through generate_presigned_url: the other 44
    # above took the shortcut, so the comparison covered it.
    assert sorted(signed_slowly) == ["get_object", "get_object", "put_object", "put_object"], signed_slowly


def test_shortcut_urls_are_accepted_by_s3(storage, s3_client, bucket):
    """Signed the short way, GETs and PUTs work against a real S3 API (moto over HTTP)."""
    import requests

    for n, key in enumerate(PRESIGN_KEYS * 2):
        body = f"object {n}".encode()
        put = storage.presign_put(S3Uri(bucket, f"out/{key}"), "text/plain; charset=utf-8")
        response = requests.put(put, data=body, headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=10)
        assert response.status_code == 200, (key, response.text)
        got = requests.get(storage.presign_get(S3Uri(bucket, f"out/{key}")), timeout=10)
        assert (got.status_code, got.content) == (200, body), key
        assert s3_client.get_object(Bucket=bucket, Key=f"out/{key}")["Body"].read() == body
    # (moto does not check signatures; that the signatures are botocore's own is the test above.)
