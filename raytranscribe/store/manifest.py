"""JSON-lines manifests: one task a line. A single bad line rejects the whole manifest.

:func:`iter_manifest` reads one line at a time (a manifest of millions of lines is never held whole);
``Store.submit_stream`` writes what it yields in one transaction, so a bad line anywhere, even after
many batches were copied, leaves nothing written.

Fields: ``input_uri`` and ``output_uri`` (required); ``engine``, ``model``, ``language``, ``formats``,
``priority``, ``max_retries``, ``backoff_factor`` and Whisper's options ``task``, ``word_timestamps``,
``initial_prompt``, ``beam_size``, ``temperature``, ``vad`` (optional; the caller's defaults fill the
gaps). ``formats`` may be ``"all"``. The options are checked where every option is
(``TranscribeOptions``), so a bad one refuses the manifest naming its line and field.
``output_uri`` is the output stem (files ``<stem>.<fmt>``), or, ending in ``/``, a prefix: the outputs
go under it named after the input file, as ``submit --output PREFIX`` does.

A line is strict JSON: a key given twice, ``NaN`` or ``Infinity`` refuse it, as do numbers the
tasks table cannot hold.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from raytranscribe.engines.base import (
    DEFAULT_ENGINE,
    DEFAULT_FORMATS,
    DEFAULT_MODEL,
    FORMATS,
    OPTION_FIELDS,
    TranscribeOptions,
    options_with,
)
from raytranscribe.errors import InvalidInput, ManifestError
from raytranscribe.store.newtask import NewTask, check_task_numbers
from raytranscribe.uris import output_stem, parse_s3_uri

REQUIRED_FIELDS = ("input_uri", "output_uri")
OPTIONAL_FIELDS = (
    "engine", "model", "language", "formats", "priority", "max_retries", "backoff_factor", *OPTION_FIELDS,
)  # fmt: skip
ALL_FORMATS = "all"  # --formats all, "formats": "all": every format there is
MANIFEST_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS


@dataclass(frozen=True)
class ManifestDefaults:
    """What a line that leaves a field out gets (the CLI fills this from its flags)."""

    engine: str = DEFAULT_ENGINE
    model: str = DEFAULT_MODEL
    language: str | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    priority: int = 0
    max_retries: int | None = None
    backoff_factor: float | None = None
    options: TranscribeOptions = field(default_factory=TranscribeOptions)  # everything else (beam size ...)

    def __post_init__(self) -> None:
        # Flags are checked before any listing or database work, with the store's own limits.
        check_task_numbers(self.priority, self.max_retries, self.backoff_factor)


def parse_formats(value: str | list | tuple) -> tuple[str, ...]:
    """``"srt,txt"`` or ``["srt", "txt"]`` -> ``("srt", "txt")``; ``"all"`` -> every format; unknown
    formats are refused."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(f, str) for f in items):
        raise InvalidInput(f"formats must be a list of strings or a comma-separated string, got {value!r}")
    out = tuple(f.strip().lower() for f in items if f.strip())
    if ALL_FORMATS in out:
        out = FORMATS + tuple(f for f in out if f != ALL_FORMATS and f not in FORMATS)  # unknown ones still refused
    if not out:
        raise InvalidInput("at least one output format is required")
    unknown = [f for f in out if f not in FORMATS]
    if unknown:
        raise InvalidInput(f"unknown output format(s) {unknown}; choose from {list(FORMATS)}")
    return out


def _typed(obj: dict, name: str, types: tuple[type, ...], what: str):
    value = obj[name]
    # bool is an int in Python; JSON true is never a count or a factor.
    if isinstance(value, bool) or not isinstance(value, types):
        raise InvalidInput(f"{name} must be {what}, got {json.dumps(value)}")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidInput(f"field {key!r} is given twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> object:
    raise InvalidInput(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)


def _load(text: str) -> object:
    try:
        return _DECODER.decode(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"bad JSON: {exc.msg} (column {exc.colno})") from exc
    except ValueError as exc:  # an integer of thousands of digits (Python's int-parsing limit)
        raise InvalidInput(f"bad JSON: {str(exc).split(';')[0]}") from exc


def _output_stem(input_uri: str, output: str) -> str:
    """The line's output stem: ``output`` itself, or, for a prefix (ends with ``/``), the input's name under it."""
    source = parse_s3_uri(input_uri, what="input_uri")
    if output.endswith("/"):
        return str(output_stem(source, parse_s3_uri(output, allow_prefix=True, what="output_uri")))
    return str(parse_s3_uri(output, what="output_uri"))


def parse_line(text: str, defaults: ManifestDefaults) -> NewTask:
    obj = _load(text)
    if not isinstance(obj, dict):
        raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(MANIFEST_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; allowed: {list(MANIFEST_FIELDS)}")
    missing = [f for f in REQUIRED_FIELDS if f not in obj]
    if missing:
        raise InvalidInput(f"missing required field(s) {missing}")
    for name in ("input_uri", "output_uri", "engine", "model"):
        if name in obj:
            _typed(obj, name, (str,), "a string")
    stem = _output_stem(obj["input_uri"], obj["output_uri"])
    language = defaults.language
    if "language" in obj:
        language = obj["language"] if obj["language"] is None else _typed(obj, "language", (str,), "a string or null")
    formats = parse_formats(obj["formats"]) if "formats" in obj else defaults.formats
    changes = tuple((name, type(obj[name]).__name__, obj[name]) for name in OPTION_FIELDS if name in obj)
    options = _line_options(defaults.options, language, formats, changes)
    return NewTask(
        input_uri=obj["input_uri"],
        output_uri=stem,
        engine=obj.get("engine", defaults.engine),
        model=obj.get("model", defaults.model),
        options=options,
        priority=_typed(obj, "priority", (int,), "an integer") if "priority" in obj else defaults.priority,
        max_retries=_typed(obj, "max_retries", (int,), "an integer >= 0") if "max_retries" in obj else defaults.max_retries,
        backoff_factor=(
            _typed(obj, "backoff_factor", (int, float), "a finite number >= 1")
            if "backoff_factor" in obj
            else defaults.backoff_factor
        ),
    )


def _line_options(
    base: TranscribeOptions, language: str | None, formats: tuple[str, ...], changes: tuple[tuple[str, str, object], ...]
) -> TranscribeOptions:
    """The line's options: ``base`` (the caller's) with the line's language, formats and option fields.
    ``changes`` are (field, its JSON type, value): the type keeps ``true`` and ``1`` apart in the cache."""
    try:
        hash(changes)
    except TypeError:  # a list or object where a value belongs: refused below, naming the field
        return _line_options_checked.__wrapped__(base, language, formats, changes)
    return _line_options_checked(base, language, formats, changes)


@functools.lru_cache(maxsize=256)  # a manifest's lines mostly share a few: one object for each
def _line_options_checked(
    base: TranscribeOptions, language: str | None, formats: tuple[str, ...], changes: tuple[tuple[str, str, object], ...]
) -> TranscribeOptions:
    try:
        options = TranscribeOptions(**{**base.to_dict(), "language": language, "formats": formats})
        # A field given is the line's value, null included (null is "no prompt", or refused where it is no value).
        return options_with(options, {name: value for name, _, value in changes}, none_is_unset=False)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def iter_manifest(lines: Iterable[str], defaults: ManifestDefaults = ManifestDefaults()) -> Iterator[NewTask]:
    """Each line's task, in order, as it is read; :class:`ManifestError` naming the first bad line when
    it is reached, or at the end when there were no tasks. Blank lines are skipped."""
    any_task = False
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            task = parse_line(text, defaults)
        except InvalidInput as exc:
            raise ManifestError(exc.message, line=number) from exc
        any_task = True
        yield task
    if not any_task:
        raise ManifestError("the manifest holds no tasks")


def parse_manifest(lines: Iterable[str], defaults: ManifestDefaults = ManifestDefaults()) -> list[NewTask]:
    """Every line a valid task, or :class:`ManifestError` naming the first bad line. Blank lines are skipped."""
    return list(iter_manifest(lines, defaults))
