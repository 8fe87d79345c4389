"""Driver-side S3: URI rules, the output layout, presigning (and its failures), listing, through moto."""

from __future__ import annotations

import socket
import stat
import uuid

import boto3
import botocore.exceptions as bex
import botocore.session
import pytest
from botocore.config import Config
from botocore.credentials import CredentialResolver

from raytranscribe.config import S3Settings
from raytranscribe.errors import ConfigError, InvalidURI, PresignError, Stage, StorageError
from raytranscribe.storage import (
    AUDIO_EXTENSIONS,
    CONTENT_TYPES,
    S3Storage,
    S3Uri,
    is_audio_key,
    output_stem,
    output_uri,
    parse_s3_uri,
)

# --- URIs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "allow_prefix", "expected"),
    [
        ("s3://my-bucket/a/b.wav", False, S3Uri("my-bucket", "a/b.wav")),
        ("s3://my.bucket.01/with space/réunion été.mp3", False, S3Uri("my.bucket.01", "with space/réunion été.mp3")),
        ("s3://abc/会议/录音 1.m4a", False, S3Uri("abc", "会议/录音 1.m4a")),
        ("s3://abc/%20literal+plus", False, S3Uri("abc", "%20literal+plus")),  # keys are not URL-decoded
        ("s3://abc//leading-slash.wav", False, S3Uri("abc", "/leading-slash.wav")),
        ("s3://abc/" + "k" * 1024, False, S3Uri("abc", "k" * 1024)),
        ("s3://" + "b" * 63 + "/k", False, S3Uri("b" * 63, "k")),
        ("s3://bucket", True, S3Uri("bucket", "")),
        ("s3://bucket/", True, S3Uri("bucket", "")),
        ("s3://bucket/in/calls/", True, S3Uri("bucket", "in/calls/")),
        ("s3://bucket/in/calls", True, S3Uri("bucket", "in/calls")),
    ],
)
def test_parse_good_uris(text, allow_prefix, expected):
    assert parse_s3_uri(text, allow_prefix=allow_prefix) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty S3 URI '': expected s3://bucket/key"),
        ("https://bucket/key", "invalid S3 URI 'https://bucket/key': must start with 's3://' (scheme 'https')"),
        ("S3://bucket/key", "invalid S3 URI 'S3://bucket/key': must start with 's3://' (scheme 'S3')"),
        ("bucket/key", "invalid S3 URI 'bucket/key': must start with 's3://' (no scheme)"),
        ("s3:///key", "invalid S3 URI 's3:///key': bucket name is empty"),
        ("s3://ab/k", "invalid S3 URI 's3://ab/k': bucket name 'ab' must be 3 to 63 characters long (got 2)"),
        (
            "s3://" + "b" * 64 + "/k",
            f"invalid S3 URI 's3://{'b' * 64}/k': bucket name '{'b' * 64}' must be 3 to 63 characters long (got 64)",
        ),
        (
            "s3://My-Bucket/k",
            "invalid S3 URI 's3://My-Bucket/k': bucket name 'My-Bucket' may contain only lowercase letters, "
            "digits, dots and hyphens (found 'B', 'M')",
        ),
        (
            "s3://my_bucket/k",
            "invalid S3 URI 's3://my_bucket/k': bucket name 'my_bucket' may contain only lowercase letters, "
            "digits, dots and hyphens (found '_')",
        ),
        ("s3://-bkt/k", "invalid S3 URI 's3://-bkt/k': bucket name '-bkt' must start and end with a lowercase letter or digit"),
        ("s3://bkt./k", "invalid S3 URI 's3://bkt./k': bucket name 'bkt.' must start and end with a lowercase letter or digit"),
        ("s3://a..b/k", "invalid S3 URI 's3://a..b/k': bucket name 'a..b' must not contain two adjacent dots"),
        ("s3://192.168.5.4/k", "invalid S3 URI 's3://192.168.5.4/k': bucket name '192.168.5.4' must not be formatted as an IP address"),
        ("s3://xn--bucket/k", "invalid S3 URI 's3://xn--bucket/k': bucket name 'xn--bucket' must not start with the reserved prefix 'xn--'"),
        (
            "s3://data-s3alias/k",
            "invalid S3 URI 's3://data-s3alias/k': bucket name 'data-s3alias' must not end with the reserved suffix '-s3alias'",
        ),
        ("s3://bucket", "invalid S3 URI 's3://bucket': object key is empty"),
        ("s3://bucket/", "invalid S3 URI 's3://bucket/': object key is empty"),
        ("s3://bucket/in/", "invalid S3 URI 's3://bucket/in/': object key 'in/' ends with '/' (a folder, not an object)"),
    ],
)
def test_parse_bad_uris(text, message):
    with pytest.raises(InvalidURI) as info:
        parse_s3_uri(text)
    assert str(info.value) == message
    assert info.value.transient is False


def test_key_over_1024_utf8_bytes_is_refused_though_under_1024_characters():
    key = "é" * 513  # 513 characters, 1026 bytes
    with pytest.raises(InvalidURI) as info:
        parse_s3_uri(f"s3://bucket/{key}")
    assert str(info.value).endswith(": key is 1026 bytes in UTF-8; S3 allows at most 1024")
    assert parse_s3_uri("s3://bucket/" + "é" * 512).key == "é" * 512


def test_s3uri_str_prefix_and_join():
    root = S3Uri("bkt", "")
    assert str(S3Uri("bkt", "a b/c.wav")) == "s3://bkt/a b/c.wav"
    assert (root.is_prefix, S3Uri("bkt", "out/").is_prefix, S3Uri("bkt", "out").is_prefix) == (True, True, False)
    assert root.join("a", "b.wav") == S3Uri("bkt", "a/b.wav")
    assert S3Uri("bkt", "out/").join("x/", "/y.json") == S3Uri("bkt", "out/x/y.json")
    assert S3Uri("bkt", "out").join("sub/") == S3Uri("bkt", "out/sub/")
    assert S3Uri("bkt", "out/").join() == S3Uri("bkt", "out/")


# --- the output layout -----------------------------------------------------------------------------

IN = "s3://in-bkt/"
OUTP = parse_s3_uri("s3://out-bkt/results/", allow_prefix=True)


@pytest.mark.parametrize(
    ("input_uri", "output_prefix", "base_prefix", "expected"),
    [
        # without a base prefix: the basename
        ("s3://in-bkt/a/b/talk.wav", "s3://out-bkt/results/", None, "s3://out-bkt/results/talk"),
        # with one: the relative path, folders kept
        ("s3://in-bkt/a/b/talk.wav", "s3://out-bkt/results/", "s3://in-bkt/a/", "s3://out-bkt/results/b/talk"),
        ("s3://in-bkt/a/b/talk.wav", "s3://out-bkt/results", "s3://in-bkt/a", "s3://out-bkt/results/b/talk"),
        ("s3://in-bkt/a/b/talk.wav", "s3://out-bkt", "s3://in-bkt", "s3://out-bkt/a/b/talk"),
        (
            "s3://in-bkt/calls/Q3 review/réunion été.m4a",
            "s3://out-bkt/t/",
            "s3://in-bkt/calls/",
            "s3://out-bkt/t/Q3 review/réunion été",
        ),
        ("s3://in-bkt/会议/录音 1.opus", "s3://out-bkt/", "s3://in-bkt/", "s3://out-bkt/会议/录音 1"),
        ("s3://in-bkt/a/README", "s3://out-bkt/r/", None, "s3://out-bkt/r/README"),  # no extension
        (
            "s3://in-bkt/v1.2/take.one/clip.final.mp3",
            "s3://out-bkt/r/",
            "s3://in-bkt/",
            "s3://out-bkt/r/v1.2/take.one/clip.final",  # dots in folders stay, only the last suffix goes
        ),
        ("s3://in-bkt/a/.hidden", "s3://out-bkt/r/", None, "s3://out-bkt/r/.hidden"),
        ("s3://in-bkt/a/archive.tar.gz", "s3://out-bkt/r/", None, "s3://out-bkt/r/archive.tar"),
    ],
)
def test_output_stem(input_uri, output_prefix, base_prefix, expected):
    base = parse_s3_uri(base_prefix, allow_prefix=True) if base_prefix else None
    out = parse_s3_uri(output_prefix, allow_prefix=True)
    stem = output_stem(parse_s3_uri(input_uri), out, base_prefix=base)
    assert str(stem) == expected
    # deterministic: a retry computes the same place and overwrites its own outputs
    assert output_stem(parse_s3_uri(input_uri), out, base_prefix=base) == stem


@pytest.mark.parametrize(
    ("input_uri", "base_prefix", "message"),
    [
        ("s3://in-bkt/x/a.wav", "s3://in-bkt/y/", "input s3://in-bkt/x/a.wav is not under the base prefix s3://in-bkt/y/"),
        ("s3://in-bkt/ab/a.wav", "s3://in-bkt/a", "input s3://in-bkt/ab/a.wav is not under the base prefix s3://in-bkt/a"),
        ("s3://in-bkt/x/a.wav", "s3://other-bkt/x/", "input s3://in-bkt/x/a.wav is not under the base prefix s3://other-bkt/x/"),
    ],
)
def test_output_stem_refuses_inputs_outside_the_base(input_uri, base_prefix, message):
    with pytest.raises(InvalidURI) as info:
        output_stem(parse_s3_uri(input_uri), OUTP, base_prefix=parse_s3_uri(base_prefix, allow_prefix=True))
    assert str(info.value) == message


def test_output_stem_refuses_a_folder_input():
    with pytest.raises(InvalidURI) as info:
        output_stem(S3Uri("in-bkt", "x/"), OUTP)
    assert str(info.value) == "input s3://in-bkt/x/ is a folder, not an object"


def test_output_uri():
    assert output_uri(S3Uri("out-bkt", "r/a b"), "srt") == S3Uri("out-bkt", "r/a b.srt")
    assert output_uri("s3://out-bkt/r/réunion", "json") == S3Uri("out-bkt", "r/réunion.json")
    with pytest.raises(InvalidURI) as info:
        output_uri(S3Uri("out-bkt", "k" * 1022), "json")
    assert str(info.value).endswith(": key is 1027 bytes in UTF-8; S3 allows at most 1024")


@pytest.mark.parametrize(
    ("key", "audio"),
    [
        ("a/b.wav", True),
        ("a/b.MP3", True),
        ("talk.flac", True),
        ("x.opus", True),
        ("x.webm", True),
        ("x.m4a", True),
        ("clip.mp4", True),
        ("a/notes.txt", False),
        ("a.wav/readme", False),
        ("noext", False),
        (".wav", False),
        ("a/b.wav.json", False),
    ],
)
def test_is_audio_key(key, audio):
    assert is_audio_key(key) is audio


def test_extension_tables():
    assert {"wav", "flac", "mp3", "m4a", "aac", "ogg", "oga", "opus", "webm", "mp4", "mka", "wma", "aiff"} <= AUDIO_EXTENSIONS
    assert CONTENT_TYPES == {
        "json": "application/json",
        "srt": "application/x-subrip",
        "vtt": "text/vtt",
        "txt": "text/plain; charset=utf-8",
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


def no_credentials_client(endpoint_url: str):
    """A real boto3 client whose credential chain is empty: nothing to sign with."""
    session = botocore.session.get_session()
    session.register_component("credential_provider", CredentialResolver(providers=[]))
    return boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", config=Config(signature_version="s3v4")
    )


def test_missing_credentials_is_a_transient_presign_error(s3_settings):
    storage = S3Storage(s3_settings, client=no_credentials_client(s3_settings.endpoint_url))
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
            "unknown output formats ['docx'] (known: ['json', 'srt', 'txt', 'vtt'])",
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
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1),
    )
    storage = S3Storage(s3_settings, client=client)
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
