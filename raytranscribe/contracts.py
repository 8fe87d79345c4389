"""What crosses the wire between the orchestrator and a worker actor: plain, picklable data.

A worker sees only presigned URLs: no task row, no credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raytranscribe.engines.base import EngineSpec, TranscribeOptions
from raytranscribe.errors import Failure


@dataclass(frozen=True)
class OutputTarget:
    format: str  # json | srt | vtt | txt
    put_url: str  # presigned PUT
    uri: str  # s3://bucket/key, for the record
    content_type: str


@dataclass(frozen=True)
class TaskSpec:
    task_id: int
    attempt: int
    input_url: str  # presigned GET
    input_uri: str  # s3://bucket/key, for names and logs
    outputs: tuple[OutputTarget, ...]
    engine: EngineSpec
    options: TranscribeOptions = field(default_factory=TranscribeOptions)


@dataclass(frozen=True)
class TaskResult:
    audio_duration_s: float
    language: str | None
    outputs: tuple[str, ...]  # URIs written
    text_preview: str = ""


@dataclass(frozen=True)
class Outcome:
    task_id: int
    attempt: int
    result: TaskResult | None = None
    failure: Failure | None = None
    actor: str | None = None
    node_id: str | None = None
    timings: tuple[tuple[str, float], ...] = ()  # (stage, seconds) in order

    @property
    def ok(self) -> bool:
        return self.failure is None
