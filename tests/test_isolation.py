"""Workers hold no credentials (issue 11, item 1): what a worker process's environment really holds.

The end-to-end tests read ``/proc/<pid>/environ`` of real worker processes: the initial environment
block the process was started with, which nothing inside it can change afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from raytranscribe import isolation, samples
from raytranscribe.cli import app
from raytranscribe.config import Settings
from raytranscribe.errors import ConfigError
from raytranscribe.isolation import (
    drop_inherited_secrets,
    secret_names,
    worker_runtime_env,
)
from raytranscribe.store.url import resolve_database_url

ROOT = Path(__file__).resolve().parents[1]


def _environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _entries(raw: bytes) -> dict[str, str]:
    out = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            out[k.decode("latin-1")] = v.decode("latin-1")
    return out


def _secret(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


def _url_with_password(database_url: str, password: str) -> str:
    return sa.engine.make_url(database_url).set(password=password).render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def _forget_noted_urls(monkeypatch):
    # Each test starts with no database URL noted by an earlier one.
    monkeypatch.setattr(isolation, "_NOTED", set())


# --- which names a worker gets blanked ----------------------------------------------------------


def test_credential_names_are_blanked_even_when_the_driver_lacks_them():
    env = worker_runtime_env(None, environ={})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "RAYTRANSCRIBE_DATABASE_URL", "RAYTRANSCRIBE_DATABASE_URL_FILE", "PGPASSWORD"):
        assert env["env_vars"][name] == "", name


def test_secret_values_under_innocent_names_are_blanked_and_the_rest_kept():
    password = "correct-horse-battery"
    url = f"postgresql+psycopg2://app:{password}@db.internal:5432/transcribe"
    environ = {
        "RAYTRANSCRIBE_DATABASE_URL": url,
        "APP_DB": url,  # the same URL, another name
        "LEGACY_CONN": f"host=db.internal password={password}",  # the password alone
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "KEY_COPY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_REGION": "us-east-1",
        "PGHOST": "db.internal",
        "GITHUB_TOKEN": "ghp_abc",
        "MY_API_KEY": "k",
        "TOKENIZERS_PARALLELISM": "false",  # TOKEN only as part of a word: not a secret
        "RAY_AUTH_TOKEN": "ray-token",  # Ray's own: workers need it to reach the GCS
        "RAYTRANSCRIBE_S3__REGION": "us-east-1",  # holds a non-secret AWS_* value: kept
        "PATH": "/usr/bin",
    }
    names = secret_names(environ)
    assert {"RAYTRANSCRIBE_DATABASE_URL", "APP_DB", "LEGACY_CONN", "AWS_SECRET_ACCESS_KEY", "KEY_COPY",
            "AWS_REGION", "PGHOST", "GITHUB_TOKEN", "MY_API_KEY"} <= names
    assert not names & {"TOKENIZERS_PARALLELISM", "RAY_AUTH_TOKEN", "RAYTRANSCRIBE_S3__REGION", "PATH"}


def test_a_short_password_blanks_only_a_variable_equal_to_it():
    environ = {"RAYTRANSCRIBE_DATABASE_URL": "postgresql://u:pw@h/db", "EXACT": "pw", "PWD": "/home/pw/x"}
    names = secret_names(environ)
    assert "EXACT" in names and "PWD" not in names


def test_a_url_given_by_flag_is_noted_and_blanked_under_any_name(monkeypatch):
    url = "postgresql+psycopg2://app:s3cr3t-pass@db.internal/transcribe"
    monkeypatch.delenv("RAYTRANSCRIBE_DATABASE_URL", raising=False)
    resolve_database_url(Settings(database_url=url))
    env = worker_runtime_env(None, environ={"DEPLOY_DB": url, "ONLY_PASS": "s3cr3t-pass"})
    assert env["env_vars"]["DEPLOY_DB"] == "" and env["env_vars"]["ONLY_PASS"] == ""


def test_the_actors_own_env_vars_are_kept_unless_secret():
    env = worker_runtime_env(
        {"env_vars": {"PYTHONPATH": "/repo", "AWS_SECRET_ACCESS_KEY": "x", "DSN": "postgresql://a:b@h/d"},
         "pip": ["x"]},
        environ={},
    )
    assert env["pip"] == ["x"]
    assert env["env_vars"]["PYTHONPATH"] == "/repo"
    assert env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "" and env["env_vars"]["DSN"] == ""


def test_the_jobs_env_vars_are_found_in_the_job_config_ray_hands_the_driver():
    job = {"runtime_env": {"env_vars": {"DB_CONN_STRING": "postgresql://a:longpassword@h/d"}}}
    names = secret_names({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)})
    assert "DB_CONN_STRING" in names and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in names


def test_the_url_files_content_is_a_secret(tmp_path):
    path = tmp_path / "database_url"
    path.write_text("postgresql://app:from-the-file@h/db\n")
    names = secret_names({"RAYTRANSCRIBE_DATABASE_URL_FILE": str(path), "COPY": "from-the-file"})
    assert "COPY" in names


def test_scrubbed_environ_withholds_then_restores(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abc-secret-value")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    with isolation.scrubbed_environ() as withheld:
        assert "AWS_SECRET_ACCESS_KEY" in withheld
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ and os.environ["SOMETHING_ELSE"] == "kept"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "abc-secret-value"


def test_a_worker_drops_inherited_secrets_and_names_only_the_leaked_credentials():
    environ = {
        "AWS_SECRET_ACCESS_KEY": "",  # blanked by the driver: dropped quietly
        "AWS_DEFAULT_REGION": "us-east-1",  # not a credential: dropped quietly
        "SERVICE_PASSWORD": "leaked",
        "CONN": "postgresql+psycopg2://u:p4ss@h/db",
        "RAY_AUTH_TOKEN": "keep-me",
        "HOME": "/home/ray",
    }
    assert drop_inherited_secrets(environ) == ["CONN", "SERVICE_PASSWORD"]
    assert environ == {"RAY_AUTH_TOKEN": "keep-me", "HOME": "/home/ray"}


@pytest.mark.slow
def test_the_worker_actor_warns_and_removes_a_secret_that_reached_it(ray_session):
    from raytranscribe.engines.base import EngineSpec
    from raytranscribe.worker import TranscriptionWorker, WorkerConfig

    saved = dict(os.environ)  # the worker scrubs the environment of the process it runs in: this one
    os.environ["UPSTREAM_API_TOKEN"] = "tok-should-not-be-here"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("raytranscribe.worker")
    logger.addHandler(handler)
    try:
        TranscriptionWorker(WorkerConfig(name="w-iso", engine=EngineSpec(model="tiny.en", device="cpu", cpu_threads=1)))
        assert "UPSTREAM_API_TOKEN" not in os.environ
    finally:
        logger.removeHandler(handler)
        os.environ.clear()
        os.environ.update(saved)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("UPSTREAM_API_TOKEN" in m for m in warnings), warnings
    assert not any("tok-should-not-be-here" in m for m in warnings)


# --- the database URL file -------------------------------------------------------------------


def test_database_url_precedence(monkeypatch, tmp_path):
    path = tmp_path / "url"
    path.write_text("  postgresql://from@file/db\n")
    monkeypatch.setenv("RAYTRANSCRIBE_DATABASE_URL_FILE", str(path))
    monkeypatch.delenv("RAYTRANSCRIBE_DATABASE_URL", raising=False)
    assert resolve_database_url(Settings()).database_url == "postgresql://from@file/db"
    monkeypatch.setenv("RAYTRANSCRIBE_DATABASE_URL", "postgresql://from@env/db")
    assert resolve_database_url(Settings()).database_url == "postgresql://from@env/db"
    flag = Settings().model_copy(update={"database_url": "postgresql://from@flag/db"})
    assert resolve_database_url(flag).database_url == "postgresql://from@flag/db"
    # The file is read only when needed: a broken one does not matter while a URL is given.
    monkeypatch.setenv("RAYTRANSCRIBE_DATABASE_URL_FILE", str(tmp_path / "missing"))
    assert resolve_database_url(Settings()).database_url == "postgresql://from@env/db"


def test_database_url_file_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the database URL file .*missing: No such file"):
        resolve_database_url(Settings(database_url_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_database_url(Settings(database_url_file=tmp_path / "empty"))


@pytest.fixture
def url_file(tmp_path, database_url) -> Path:
    path = tmp_path / "database_url"
    path.write_text(database_url + "\n")
    path.chmod(0o600)
    return path


def test_cli_reads_the_database_url_from_the_file(url_file, store):
    runner = CliRunner()
    env = {"RAYTRANSCRIBE_DATABASE_URL": None, "RAYTRANSCRIBE_DATABASE_URL_FILE": str(url_file),
           "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"}
    result = runner.invoke(app, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert "database schema at revision" in result.stdout


def test_cli_environment_and_flag_win_over_the_file(url_file, database_url, store):
    runner = CliRunner()
    nowhere = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    nowhere_file = url_file.parent / "nowhere"
    nowhere_file.write_text(nowhere)
    env = {"RAYTRANSCRIBE_DATABASE_URL": database_url, "RAYTRANSCRIBE_DATABASE_URL_FILE": str(nowhere_file),
           "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"}
    assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    env = {"RAYTRANSCRIBE_DATABASE_URL": nowhere, "RAYTRANSCRIBE_DATABASE_URL_FILE": str(nowhere_file),
           "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"}
    result = runner.invoke(app, ["--database-url", database_url, "db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("content", [None, ""])
def test_cli_bad_database_url_file_is_exit_2_with_one_line(tmp_path, content):
    path = tmp_path / "database_url"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(
        app, ["status"], env={"RAYTRANSCRIBE_DATABASE_URL": None, "RAYTRANSCRIBE_DATABASE_URL_FILE": str(path)}
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.output


# --- real worker processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_an_actor_started_with_worker_runtime_env_gets_no_secret(ray_session):
    @ray_session.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    secret = _secret("actor-level")
    given = {"env_vars": {"AWS_SECRET_ACCESS_KEY": secret, "KEEP_ME": "1"}}
    control = Probe.options(runtime_env=given).remote()
    probe = Probe.options(runtime_env=worker_runtime_env(given)).remote()
    control_env = _entries(_environ_of(ray_session.get(control.pid.remote(), timeout=120)))
    probe_raw = _environ_of(ray_session.get(probe.pid.remote(), timeout=120))
    probe_env = _entries(probe_raw)
    # Ray really sets what an actor's runtime_env says (so the check below can fail)...
    assert control_env["AWS_SECRET_ACCESS_KEY"] == secret
    # ...and the scrubbed actor gets the name blanked, keeps the rest, and the job's env_vars still merge in.
    assert secret.encode() not in probe_raw
    assert probe_env["AWS_SECRET_ACCESS_KEY"] == "" and probe_env["KEEP_ME"] == "1"
    assert probe_env.get("PYTHONPATH") == str(ROOT)
    for handle in (control, probe):
        ray_session.kill(handle)


LOCAL_RAY_SCRIPT = r"""
import json, os, ray
from raytranscribe.config import Settings
from raytranscribe.service import LocalRay, connect_ray

assert connect_ray(Settings(), LocalRay(num_cpus=1, num_gpus=0))

@ray.remote(num_cpus=0)
class Probe:  # a plain actor: what any process the local raylet spawns inherits
    def pid(self):
        return os.getpid()

pid = ray.get(Probe.remote().pid.remote(), timeout=120)
raw = open(f"/proc/{pid}/environ", "rb").read()
print(json.dumps({"environ": raw.decode("latin-1"),
                  "restored": {k: os.environ.get(k) for k in ("AWS_SECRET_ACCESS_KEY", "RAYTRANSCRIBE_DATABASE_URL")}}))
ray.shutdown()
"""


@pytest.mark.slow
def test_connect_ray_starts_a_local_ray_whose_workers_never_had_the_secrets():
    password, key = _secret("pw"), _secret("aws-secret")
    url = f"postgresql+psycopg2://app:{password}@127.0.0.1:5432/nowhere"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYTRANSCRIBE_", "RAY_ADDRESS"))}
    env.update(
        AWS_ACCESS_KEY_ID="AKIA" + uuid.uuid4().hex[:16].upper(),
        AWS_SECRET_ACCESS_KEY=key,
        RAYTRANSCRIBE_DATABASE_URL=url,
        OLD_DEPLOY_DSN=url,
        PGPASSWORD=password,
    )
    # Its own Ray, not the session's; a short path, as Ray's socket paths must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="rt-iso-", dir="/tmp") as ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
        out = subprocess.run([sys.executable, "-c", LOCAL_RAY_SCRIPT], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=240)  # under pytest's 300 s
    assert out.returncode == 0, out.stderr[-4000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    raw, entries = doc["environ"], _entries(doc["environ"].encode("latin-1"))
    for value in (env["AWS_ACCESS_KEY_ID"], key, url, password):
        assert value not in raw
    # Withheld from the raylet itself, not merely blanked: the names are absent.
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OLD_DEPLOY_DSN", "PGPASSWORD"} & set(entries)
    # The driver got them back for its own use.
    assert doc["restored"] == {"AWS_SECRET_ACCESS_KEY": key, "RAYTRANSCRIBE_DATABASE_URL": url}


def _poll_worker_environs(namespace: str, proc: subprocess.Popen, seen: dict[str, bytes]) -> None:
    """While the driver runs, ping each of its worker actors and read its process environment."""
    import ray

    while proc.poll() is None:
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if entry["namespace"] != namespace or not name.startswith("worker-") or name in seen:
                continue
            try:
                reply = ray.get(ray.get_actor(name, namespace=namespace).ping.remote(), timeout=60)
                seen[name] = _environ_of(reply.pid)
            except Exception:  # gone between listing and pinging: the next one will do
                continue
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["environment", "file"])
def test_real_run_workers_hold_none_of_the_drivers_secrets(
    route, database_url, store, s3_settings, s3_client, bucket, ray_address, tmp_path
):
    """A backfill driven as `ray job submit` drives it, with the secrets where the old README recipe
    put them: in the driver's environment and in the job's env_vars, which Ray gives every worker."""
    password = _secret("pw")
    url = _url_with_password(database_url, password)  # the test server trusts loopback: any password works
    key_id, key = "AKIA" + uuid.uuid4().hex[:16].upper(), _secret("aws-secret")
    for path in samples.sample_paths():
        for copy in range(2):  # enough work that the actor stays up while it is read
            s3_client.upload_file(str(path), bucket, f"in/{copy}-{path.name}")

    namespace = f"rt-iso-{uuid.uuid4().hex[:6]}"
    secrets = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": key}
    if route == "environment":
        secrets.update(RAYTRANSCRIBE_DATABASE_URL=url, APP_DATABASE=url, PGPASSWORD=password)
    else:
        url_file = tmp_path / "database_url"
        url_file.write_text(url + "\n")
        url_file.chmod(0o600)
        secrets.update(RAYTRANSCRIBE_DATABASE_URL_FILE=str(url_file))
    job_env_vars = {**secrets, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYTRANSCRIBE_", "AWS_", "PG"))}
    env.update(
        job_env_vars,
        # What `ray job submit --runtime-env-json` hands the entrypoint (ray's JobSupervisor).
        RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps({"runtime_env": {"env_vars": job_env_vars}, "metadata": {}}),
        RAY_ADDRESS=ray_address,
        RAYTRANSCRIBE_NAMESPACE=namespace,
        RAYTRANSCRIBE_S3__ENDPOINT_URL=s3_settings.endpoint_url,
        RAYTRANSCRIBE_ENGINE__CPU_THREADS="1",
        RAYTRANSCRIBE_ENGINE__DEVICE="cpu",
        RAYTRANSCRIBE_LOG_LEVEL="WARNING",
    )
    log_path = tmp_path / "driver.log"  # a file, not a pipe: a full pipe would stall the driver
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "jobs/backfill.py", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/out/",
             "--actors", "1"],
            env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )
        seen: dict[str, bytes] = {}
        try:
            _poll_worker_environs(namespace, proc, seen)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log_path.read_text(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    # A real run: every input transcribed and written.
    written = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])}
    assert len([k for k in written if k.endswith(".txt")]) == 2 * len(samples.sample_paths()), written
    assert seen, f"no worker actor was seen while the job ran: {output[-2000:]}"
    for name, raw in seen.items():
        for value in (key_id, key, url, password):
            assert value.encode() not in raw, f"{name} holds a secret of the driver"
