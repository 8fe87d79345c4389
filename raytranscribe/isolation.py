"""Credential isolation: what a worker actor's process may see of the driver's secrets (nothing).

Workers hold no credentials of any kind (ARCHITECTURE.md, "Why these walls"). A Ray worker process
gets its environment from two places, and each is closed here:

1. The raylet that starts it passes on its own environment, which is that of whatever started Ray.
   For a local Ray that is the driver's ``ray.init``: :func:`scrubbed_environ` takes the secrets out
   of ``os.environ`` around it (``service.connect_ray``), so the raylet never has them.
2. Its runtime_env's ``env_vars``. Ray merges the job's runtime_env (``ray job submit
   --runtime-env-json``, ``ray.init(runtime_env=...)``) into every actor's, per variable, the
   actor's keys winning (``ray.runtime_env.runtime_env._merge_runtime_env``; the core worker does
   the same for actors). ``env_vars`` can only set a variable, never unset one, so
   :func:`worker_runtime_env` sets every secret name to the empty string: whatever the job or the
   raylet holds under that name, the actor gets ``NAME=``.

What counts as a secret (:func:`secret_names`):

* :data:`CREDENTIAL_NAMES`, always, whether or not the driver has them (the job's env_vars or a
  raylet started from another shell may): AWS SDK credential sources (keys, session tokens,
  profiles and credential files, web identity, the ECS/EKS container credential endpoints), the
  database URL settings (``RAYTRANSCRIBE_DATABASE_URL``, ``..._FILE``, the common ``DATABASE_URL``),
  libpq's password sources, and the alert webhook (webhook URLs usually embed a token).
* Every ``AWS_*`` and ``PG*`` variable the driver has (a worker needs no AWS or PostgreSQL setting),
  and every variable whose name says secret (a ``SECRET``, ``PASSWORD``, ``TOKEN``, ``CREDENTIALS``
  ... part, or ``API_KEY``/``ACCESS_KEY``/``PRIVATE_KEY``).
* Every variable whose *value* holds a secret value: the database URL however the driver got it
  (flag, environment, file: ``store.url.resolve_database_url`` notes it), its password, the value of
  every variable whose name says secret (not of a mere ``AWS_REGION``), and any database URL with
  a password in it. Values shorter than :data:`MIN_CONTAINED` match only whole values, so a short
  password does not blank half the environment.

The driver's own environment keeps everything: it presigns with the AWS credentials and connects
with the URL. Only what reaches a worker is scrubbed.

``RAY_*`` variables are never touched: they are Ray's own configuration, and workers need the
cluster's auth token (``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``) to talk to the GCS at all.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from raytranscribe.errors import ConfigError

log = logging.getLogger(__name__)

DATABASE_URL_VAR = "RAYTRANSCRIBE_DATABASE_URL"
DATABASE_URL_FILE_VAR = "RAYTRANSCRIBE_DATABASE_URL_FILE"

CREDENTIAL_NAMES: frozenset[str] = frozenset(
    {
        # AWS SDK credential chain (botocore's env, shared-file, web-identity and container providers)
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        # the database
        DATABASE_URL_VAR,
        DATABASE_URL_FILE_VAR,
        "DATABASE_URL",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICEFILE",
        # alert webhooks carry their token in the URL
        "RAYTRANSCRIBE_ALERTS__WEBHOOK_URL",
    }
)

# A secret value at least this long blanks any variable that contains it; a shorter one only a
# variable that equals it.
MIN_CONTAINED = 6

_SECRET_PARTS = frozenset(
    {"SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
)
_SECRET_PAIRS = ("API_KEY", "ACCESS_KEY", "PRIVATE_KEY", "SECRET_KEY")
_PG_NAME = re.compile(r"^PG[A-Z]")
# A URL with a password in it, of a database scheme: what a worker must never hold, whatever its name.
_DB_URL_WITH_PASSWORD = re.compile(
    r"\b(?:postgres|postgresql|mysql|mariadb|redis|mongodb)(?:\+\w+)?://[^/\s:@]*:[^@\s]+@"
)
_JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # how `ray job submit` hands the job's runtime_env to the driver

# Database URLs this process resolved, by whatever route (the --database-url flag leaves no trace in
# the environment, yet a variable may hold the same URL under another name).
_NOTED: set[str] = set()


# Variables whose value is itself a secret (not a profile name, a path or a region): any other
# variable holding that value is blanked too.
_VALUE_SECRETS = frozenset(
    {DATABASE_URL_VAR, "DATABASE_URL", "PGPASSWORD", "RAYTRANSCRIBE_ALERTS__WEBHOOK_URL"}
)


def _says_secret(upper: str) -> bool:
    return bool(_SECRET_PARTS.intersection(upper.split("_"))) or any(p in upper for p in _SECRET_PAIRS)


def is_secret_name(name: str) -> bool:
    """Whether a variable, by its name alone, must never reach a worker."""
    upper = name.upper()
    if upper.startswith("RAY_"):
        return False
    if upper in CREDENTIAL_NAMES or upper.startswith("AWS_") or _PG_NAME.match(upper):
        return True
    return _says_secret(upper)


def _holds_secret_value(name: str) -> bool:
    upper = name.upper()
    return not upper.startswith("RAY_") and (upper in _VALUE_SECRETS or _says_secret(upper))


def url_secrets(url: str) -> set[str]:
    """A database URL and the password inside it (as written and decoded)."""
    out = {url}
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL we can parse: the whole value is still a secret
        password = None
    if password:
        out |= {password, unquote(password)}
    return out


def note_database_url(url: str) -> None:
    """Remember a database URL this process uses, so no worker ever receives it or its password."""
    _NOTED.update(url_secrets(url))


def read_database_url_file(path: str | Path) -> str:
    """The database URL kept in a file on the driver's node (its content, stripped)."""
    try:
        url = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"cannot read the database URL file {DATABASE_URL_FILE_VAR}={path}: {reason}") from exc
    if not url:
        raise ConfigError(f"the database URL file {DATABASE_URL_FILE_VAR}={path} is empty")
    return url


def _job_env_vars(environ: Mapping[str, str]) -> dict[str, str]:
    """The env_vars of the job's runtime_env, as `ray job submit` hands them to the driver."""
    try:
        doc = json.loads(environ.get(_JOB_CONFIG_VAR) or "{}")
        env_vars = (doc.get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in env_vars.items()} if isinstance(env_vars, dict) else {}


def secret_values(environ: Mapping[str, str]) -> set[str]:
    """Every secret value this driver knows of: noted URLs, secret-named variables' values, the URL file."""
    values = set(_NOTED)
    for name, value in environ.items():
        if value and _holds_secret_value(name):
            values.add(value)
            if name.upper() in (DATABASE_URL_VAR, "DATABASE_URL"):
                values |= url_secrets(value)
    url_file = environ.get(DATABASE_URL_FILE_VAR)
    if url_file:
        try:
            values |= url_secrets(read_database_url_file(url_file))
        except ConfigError:  # not on this node, or unreadable: nothing in it to look for
            pass
    values.discard("")
    return values


def _holds(value: str, secrets: set[str]) -> bool:
    if _DB_URL_WITH_PASSWORD.search(value):
        return True
    return any(s == value or (len(s) >= MIN_CONTAINED and s in value) for s in secrets)


def secret_names(environ: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> set[str]:
    """Names a worker must not inherit from ``environ`` (the driver's, by default) and from ``extra``
    (env_vars about to be given to a worker): see the module's docstring."""
    environ = os.environ if environ is None else environ
    candidates = {**_job_env_vars(environ), **environ, **(extra or {})}
    secrets = secret_values(candidates)
    names = set(CREDENTIAL_NAMES)
    for name, value in candidates.items():
        if name.upper().startswith("RAY_"):
            continue
        if is_secret_name(name) or (value and _holds(value, secrets)):
            names.add(name)
    return names


def worker_runtime_env(base: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The runtime_env every worker actor starts with: ``base`` with every secret name set to ``""``
    (over the job's env_vars, the raylet's environment, and ``base``'s own env_vars)."""
    env = dict(base or {})
    own = {str(k): str(v) for k, v in dict(env.get("env_vars") or {}).items()}
    blank = secret_names(environ, own)
    env["env_vars"] = {**{k: v for k, v in own.items() if k not in blank}, **{name: "" for name in sorted(blank)}}
    return env


@contextmanager
def scrubbed_environ() -> Iterator[list[str]]:
    """``os.environ`` without the secrets for the duration (to start a local Ray whose raylet, and so
    every worker it spawns, never has them); restored afterwards for the driver's own use."""
    names = sorted(n for n in secret_names(os.environ) if n in os.environ)
    saved = {n: os.environ.pop(n) for n in names}
    try:
        yield names
    finally:
        os.environ.update(saved)


def drop_inherited_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Inside a worker: remove secret-named (and database-URL-valued) variables from ``os.environ``,
    so nothing this process starts or loads can use them. Returns the credentials among them that
    were non-empty, which means something bypassed :func:`worker_runtime_env` (a mere ``AWS_REGION``
    goes quietly). The process's initial environment block, /proc/PID/environ, cannot be changed
    from inside: keeping secrets out of it is the driver's job."""
    environ = os.environ if environ is None else environ
    leaked = []
    for name in list(environ):
        value = environ[name]
        if name.upper().startswith("RAY_"):
            continue
        url_valued = bool(_DB_URL_WITH_PASSWORD.search(value))
        if is_secret_name(name) or url_valued:
            del environ[name]
            if value and (url_valued or name.upper() in CREDENTIAL_NAMES or _holds_secret_value(name)):
                leaked.append(name)
    return sorted(leaked)
