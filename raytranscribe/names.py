"""The names a task spells: its engines, output formats and Whisper tasks, in one place that imports
nothing, so that the command line's help and the Client's defaults read them without loading the
engines (``engines.base`` re-exports them)."""

from __future__ import annotations

ENGINES: tuple[str, ...] = ("faster-whisper", "openai-whisper")
# Every output format, in the one order a task's formats are kept in. New ones go at the end and
# stay out of DEFAULT_FORMATS: the dedupe key of every task already stored spells the default.
FORMATS: tuple[str, ...] = ("json", "srt", "vtt", "txt", "tsv")
DEFAULT_FORMATS: tuple[str, ...] = ("json", "srt", "vtt", "txt")  # what a task that names none writes
TASKS: tuple[str, ...] = ("transcribe", "translate")  # Whisper's tasks: translate writes English
