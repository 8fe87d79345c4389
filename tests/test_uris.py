"""S3 URIs: parsing, bucket and key rules (dot and empty segments refused), the output layout."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raytranscribe.errors import InvalidURI
from raytranscribe.uris import (
    AUDIO_EXTENSIONS,
    S3Uri,
    is_audio_key,
    key_problem,
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
        # dots are fine inside a segment, and as a segment of three or more
        ("s3://abc/a/.../b.wav", False, S3Uri("abc", "a/.../b.wav")),
        ("s3://abc/.x./..y/z../.hidden", False, S3Uri("abc", ".x./..y/z../.hidden")),
        ("s3://abc/%2e%2e/x.wav", False, S3Uri("abc", "%2e%2e/x.wav")),  # literal: boto3 signs '%252e'
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


def test_audio_extensions():
    assert {"wav", "flac", "mp3", "m4a", "aac", "ogg", "oga", "opus", "webm", "mp4", "mka", "wma", "aiff"} <= AUDIO_EXTENSIONS




# --- dot and empty segments ------------------------------------------------------------------------

DOT = "which HTTP clients resolve to another object"


@pytest.mark.parametrize(
    ("text", "allow_prefix", "message"),
    [
        ("s3://bkt/dd/../evil/x.wav", False, f"invalid S3 URI 's3://bkt/dd/../evil/x.wav': key 'dd/../evil/x.wav' has a '..' segment, {DOT}"),
        ("s3://bkt/./x.wav", False, f"invalid S3 URI 's3://bkt/./x.wav': key './x.wav' has a '.' segment, {DOT}"),
        ("s3://bkt/../x.wav", False, f"invalid S3 URI 's3://bkt/../x.wav': key '../x.wav' has a '..' segment, {DOT}"),
        ("s3://bkt/a/..", False, f"invalid S3 URI 's3://bkt/a/..': key 'a/..' has a '..' segment, {DOT}"),
        ("s3://bkt/a//b.wav", False, "invalid S3 URI 's3://bkt/a//b.wav': key 'a//b.wav' has an empty segment ('//' or a leading '/')"),
        ("s3://bkt//x.wav", False, "invalid S3 URI 's3://bkt//x.wav': key '/x.wav' has an empty segment ('//' or a leading '/')"),
        # prefixes: `submit s3://bucket/x/..` must not list the bucket root, nor `-o` climb out of its prefix
        ("s3://bkt/x/..", True, f"invalid S3 URI 's3://bkt/x/..': key 'x/..' has a '..' segment, {DOT}"),
        ("s3://bkt/x/../", True, f"invalid S3 URI 's3://bkt/x/../': key 'x/../' has a '..' segment, {DOT}"),
        ("s3://out/a/../../in/", True, f"invalid S3 URI 's3://out/a/../../in/': key 'a/../../in/' has a '..' segment, {DOT}"),
        ("s3://bkt/.", True, f"invalid S3 URI 's3://bkt/.': key '.' has a '.' segment, {DOT}"),
        ("s3://bkt//", True, "invalid S3 URI 's3://bkt//': key '/' has an empty segment ('//' or a leading '/')"),
        ("s3://bkt/a//", True, "invalid S3 URI 's3://bkt/a//': key 'a//' has an empty segment ('//' or a leading '/')"),
    ],
)
def test_dot_and_empty_segments_are_refused(text, allow_prefix, message):
    with pytest.raises(InvalidURI) as info:
        parse_s3_uri(text, allow_prefix=allow_prefix)
    assert str(info.value) == message


def test_the_uri_is_named_as_the_caller_says():
    with pytest.raises(InvalidURI) as info:
        parse_s3_uri("s3://out/a/../in/", allow_prefix=True, what="--output")
    assert str(info.value).startswith("invalid --output 's3://out/a/../in/': key 'a/../in/' has a '..' segment")
    with pytest.raises(InvalidURI) as info:
        parse_s3_uri(42, what="input URI")  # type: ignore[arg-type]
    assert str(info.value) == "invalid input URI 42: expected a string s3://bucket/key"


def test_key_problem_on_folders_and_objects():
    assert key_problem("", prefix=True) is None  # the bucket root
    assert key_problem("in/calls/", prefix=True) is None
    assert key_problem("in/calls", prefix=True) is None
    assert key_problem("in/x.wav") is None
    assert "empty segment" in key_problem("in/calls/")  # an object key ending in '/' has an empty last segment
    assert "'..' segment" in key_problem("in/../x.wav")


def test_output_stem_never_leaves_the_output_prefix():
    """Built from S3Uri directly (as a listing yields them), unchecked parts still cannot climb out."""
    out = parse_s3_uri("s3://out-bkt/results/", allow_prefix=True)
    with pytest.raises(InvalidURI) as info:
        output_stem(S3Uri("in-bkt", "dd/../../evil/x.wav"), out, base_prefix=S3Uri("in-bkt", "dd/"))
    assert str(info.value) == (
        "output for s3://in-bkt/dd/../../evil/x.wav under s3://out-bkt/results/: "
        f"key 'results/../../evil/x' has a '..' segment, {DOT}"
    )
    with pytest.raises(InvalidURI) as info:
        output_stem(S3Uri("in-bkt", "a/x.wav"), S3Uri("out-bkt", "r/../../in/"), base_prefix=S3Uri("in-bkt", "a/"))
    assert "has a '..' segment" in str(info.value)
    # join() drops the empty segment: the stem is clean (the input itself is refused where it enters)
    assert output_stem(S3Uri("in-bkt", "a//x.wav"), out, base_prefix=S3Uri("in-bkt", "a/")) == S3Uri("out-bkt", "results/x")


@pytest.mark.parametrize(
    ("key", "stem"),
    [
        ("in/..wav", "s3://out-bkt/r/..wav"),  # "." is no name: the file keeps its whole name
        ("in/...wav", "s3://out-bkt/r/...wav"),
        ("in/....wav", "s3://out-bkt/r/..."),  # "..." is a name like any other
        ("in/.wav", "s3://out-bkt/r/.wav"),  # a dotfile has no extension to lose
    ],
)
def test_output_stem_of_dotty_names_is_a_clean_key(key, stem):
    out = output_stem(S3Uri("in-bkt", key), parse_s3_uri("s3://out-bkt/r/", allow_prefix=True))
    assert str(out) == stem
    assert parse_s3_uri(str(out)) == out  # the store accepts what the layout makes


def test_uris_imports_no_io():
    code = "import sys, raytranscribe.uris; print([m for m in ('boto3', 'botocore', 'requests', 'sqlalchemy', 'ray') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr
