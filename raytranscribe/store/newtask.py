"""A task to submit: what makes one valid, and the dedupe key that makes two the same task."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from raytranscribe.engines.base import DEFAULT_ENGINE, DEFAULT_MODEL, TranscribeOptions
from raytranscribe.engines.models import english_only
from raytranscribe.errors import InvalidInput
from raytranscribe.names import ENGINES, FORMATS
from raytranscribe.uris import parse_s3_uri

# The tasks table's integer columns (priority, max_retries) are PostgreSQL int4.
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
# pg_advisory_xact_lock key serialising submits, so two of them cannot both pass the output check ("rtsb").
SUBMIT_LOCK_KEY = 0x72747362
# A third-party engine: any importable class taking an EngineSpec (see raytranscribe.engines.load_engine).
PLUGIN_ENGINE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def check_task_numbers(priority: object, max_retries: object, backoff_factor: object) -> None:
    """Refuse numbers a task row cannot hold, naming the field (NewTask, and the CLI's flags before any work)."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidInput(f"priority must be an integer, got {priority!r}")
    if not INT4_MIN <= priority <= INT4_MAX:
        raise InvalidInput(f"priority must be an integer from {INT4_MIN} to {INT4_MAX}, got {priority}")
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
    ):
        raise InvalidInput(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if max_retries is not None and max_retries > INT4_MAX:
        raise InvalidInput(f"max_retries must be an integer from 0 to {INT4_MAX}, got {max_retries}")
    if backoff_factor is not None and not _finite_at_least_one(backoff_factor):
        raise InvalidInput(f"backoff_factor must be a finite number >= 1, got {backoff_factor!r}")


def _finite_at_least_one(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return 1 <= float(value) < math.inf  # also refuses NaN
    except OverflowError:  # an int beyond any float8
        return False


def _canonical_formats(formats: Sequence[str]) -> tuple[str, ...]:
    # One order (FORMATS') and no repeats, so "txt,json", "json,txt" and "json,json,txt" are one task.
    # Not alphabetical: the default tuple, and so the dedupe key of every task already stored, stays as it was.
    return _canonical_tuple(formats) if isinstance(formats, tuple) else _canonical_tuple.__wrapped__(formats)


@functools.lru_cache(maxsize=256)  # every task of a submission asks, mostly about one tuple
def _canonical_tuple(formats: Sequence[str]) -> tuple[str, ...]:
    known = {f: i for i, f in enumerate(FORMATS)}
    return tuple(sorted(set(formats), key=lambda f: (known.get(f, len(known)), f)))


@dataclass(frozen=True)
class NewTask:
    """A task to submit. ``output_uri`` is the output *stem*: files are ``f"{output_uri}.{fmt}"``."""

    input_uri: str
    output_uri: str
    engine: str = DEFAULT_ENGINE
    model: str = DEFAULT_MODEL
    options: TranscribeOptions = field(default_factory=TranscribeOptions)
    priority: int = 0
    max_retries: int | None = None  # None: the store's RetryPolicy default, written into the row
    backoff_factor: float | None = None

    def __post_init__(self) -> None:
        parse_s3_uri(self.input_uri, what="input URI")
        parse_s3_uri(self.output_uri, what="output URI")
        if self.engine not in ENGINES and not PLUGIN_ENGINE.fullmatch(self.engine):
            raise InvalidInput(
                f"unknown engine {self.engine!r}; choose from {list(ENGINES)} or name a plugin as 'package.module:Class'"
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidInput(f"model must be a non-empty name, got {self.model!r}")
        if not isinstance(self.options, TranscribeOptions):
            raise InvalidInput(f"options must be TranscribeOptions, got {type(self.options).__name__}")
        check_task_numbers(self.priority, self.max_retries, self.backoff_factor)
        if self.options.task == "translate" and english_only(self.model):
            raise InvalidInput(
                f"task translate needs a multilingual model: {self.model!r} is English-only "
                "(it transcribes English and cannot translate); choose one such as base or small"
            )
        formats = _canonical_formats(self.options.formats)
        if formats != self.options.formats:
            object.__setattr__(self, "options", replace(self.options, formats=formats))

    @functools.cached_property  # submit reads it several times per task; 100k tasks, 100k hashes
    def dedupe_key(self) -> str:
        """Same input, engine, model and options: the same task (the output stem does not count)."""
        # json.dumps([input, engine, model, options], sort_keys=True, separators=(",", ":"),
        # ensure_ascii=False), with the options' part made once per distinct options.
        string = _KEY_ENCODER.encode
        options = _options_canonical(self.options)
        canonical = f"[{string(self.input_uri)},{string(self.engine)},{string(self.model)},{options}]"
        return hashlib.sha256(canonical.encode()).hexdigest()


_KEY_ENCODER = json.JSONEncoder(ensure_ascii=False)


@functools.lru_cache(maxsize=256)
def _options_canonical(options: TranscribeOptions) -> str:
    """The options as the dedupe key spells them (sorted keys, no spaces)."""
    return json.dumps(options.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def refusal_of_shared_stem(first_input: str, input_uri: str, stem: str) -> InvalidInput:
    """Two distinct new tasks (dedupe keys differ) with one output stem would overwrite each other."""
    if first_input == input_uri:
        return InvalidInput(
            f"input {input_uri!r} is given twice with different settings (engine, model or options), "
            f"both writing {stem}.*; give each its own output"
        )
    return InvalidInput(f"inputs {first_input!r} and {input_uri!r} would both write {stem}.*; give each its own output")
