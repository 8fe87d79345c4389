"""openai-whisper engine: ``whisper.load_model`` once in ``__init__``, the model kept resident.

Audio arrives as a numpy array, so openai-whisper never shells out to an ``ffmpeg`` binary.
openai-whisper has no VAD of its own: with ``TranscribeOptions.vad_filter`` (the default) this engine
runs the same Silero VAD as faster-whisper (engines/vad.py) and decodes only the speech, its times
mapped back to file time; without it, its batched windows are fixed 30 s steps cut at quiet moments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from raytranscribe.engines import (
    check_task,
    empty_transcript,
    install_hint,
    is_silence,
    prepare_audio,
    resolve_batch_size,
    resolve_device,
    temperature_schedule,
    vad,
)
from raytranscribe.engines.base import (
    SAMPLE_RATE,
    EngineSpec,
    PreparedAudio,
    Segment,
    Transcript,
    TranscribeOptions,
    Window,
    WindowJob,
    decode_in_groups,
    segment_from_dict,
)
from raytranscribe.engines.models import looks_like_path, resolve_openai_whisper_model
from raytranscribe.engines.quality import WindowQuality, loop_ratio, no_speech_behind_vad
from raytranscribe.engines.windows import fixed_windows, speech_windows
from raytranscribe.errors import ModelLoadError, Stage, TranscriptionError

log = logging.getLogger(__name__)

ENGINE_NAME = "openai-whisper"


class OpenAIWhisperEngine:
    def __init__(self, spec: EngineSpec) -> None:
        try:
            import whisper
        except ImportError as exc:
            raise ModelLoadError(f"openai-whisper is not installed: {install_hint(ENGINE_NAME)}") from exc
        self._whisper = whisper
        self.spec = spec
        self.device = resolve_device(spec.device, ENGINE_NAME)
        self.fp16 = self.device == "cuda"  # fp32 on CPU: torch has no fast half-precision CPU kernels
        source = resolve_openai_whisper_model(spec.model)
        try:
            self.model = whisper.load_model(source, device=self.device, download_root=spec.download_root)
        except Exception as exc:  # RuntimeError (unknown name, bad checkpoint), URLError (offline), OSError ...
            if looks_like_path(source):
                reason = f"could not load checkpoint {source}"
            elif source in whisper.available_models():
                reason = f"model {source!r} is not available locally and could not be downloaded"
            else:
                reason = f"unknown openai-whisper model {source!r} (available: {', '.join(whisper.available_models())})"
            raise ModelLoadError(f"{reason}: {type(exc).__name__}: {exc}") from exc
        self.model.eval()
        log.info(
            "openai-whisper %r resident on %s (fp16=%s)", spec.model, self.device, self.fp16,
            extra={"stage": Stage.MODEL_LOAD.value},
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        audio = prepare_audio(audio, ENGINE_NAME)
        check_task(options, self.multilingual, self.spec)
        default_language = None if self.multilingual else "en"
        if is_silence(audio):
            return empty_transcript(audio, self.spec, options, options.language or default_language)
        speech: Window | None = None
        if options.vad_filter:
            spans = vad.speech_spans(audio, max_chunk_s=float("inf"))
            speech = vad.joined(audio, spans)
            if speech is None:
                return replace(empty_transcript(audio, self.spec, options, options.language or default_language),
                               speech_s=0.0)  # fmt: skip
        try:
            result = self._whisper.transcribe(
                self.model,
                audio if speech is None else speech.samples,
                verbose=None,  # no printing from a worker
                temperature=temperature_schedule(options.temperature),
                initial_prompt=options.initial_prompt,
                word_timestamps=options.word_timestamps,
                language=options.language or default_language,
                task=options.task,
                beam_size=options.beam_size if options.beam_size > 1 else None,  # None = greedy
                fp16=self.fp16,
            )
        except Exception as exc:
            raise TranscriptionError(
                f"openai-whisper failed on {audio.size / SAMPLE_RATE:.2f} s of audio: {type(exc).__name__}: {exc}"
            ) from exc
        segments = tuple(_segment(s) for s in result["segments"])
        if speech is not None:  # the batched path's gate behind a VAD (whisper.transcribe applies Whisper's)
            segments = tuple(
                _in_file_time(s, speech) for s in segments if not no_speech_behind_vad(s.no_speech_prob, s.avg_logprob)
            )
        return Transcript(
            segments=segments,
            language=result.get("language"),
            duration_s=audio.size / SAMPLE_RATE,
            engine=self.spec.engine,
            model=self.spec.model,
            options=options,
            speech_s=None if speech is None else round(speech.duration_s, 3),
        )

    # --- batched decoding (raytranscribe.batching) ----------------------------------------------

    @property
    def batch_size(self) -> int:
        return resolve_batch_size(self.spec, self.device)

    def prepare(self, audio: np.ndarray, options: TranscribeOptions) -> PreparedAudio:
        """Windows of the VAD's speech (``vad_filter``) or fixed 30 s steps cut at quiet moments,
        language settled (see BatchEngine.prepare)."""
        audio = prepare_audio(audio, ENGINE_NAME)
        check_task(options, self.multilingual, self.spec)
        duration = audio.size / SAMPLE_RATE
        forced = options.language if self.multilingual else "en"
        if is_silence(audio):
            return PreparedAudio(
                windows=(), language=forced, duration_s=duration, speech_s=0.0 if options.vad_filter else None
            )
        speech_s = None
        if options.vad_filter:
            spans = vad.speech_spans(audio)
            windows = speech_windows(audio, spans)
            speech_s = vad.speech_seconds(spans)
        else:
            windows = fixed_windows(audio)
        language, probability = forced, (1.0 if forced else None)
        if windows and forced is None:
            try:
                language, probability = self._detect_language(windows)
            except Exception as exc:
                raise TranscriptionError(
                    f"openai-whisper could not detect the language of {duration:.2f} s of audio: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return PreparedAudio(
            windows=windows, language=language, duration_s=duration, language_probability=probability,
            speech_s=speech_s,
        )

    def _mel(self, samples: np.ndarray):
        w = self._whisper
        return w.log_mel_spectrogram(w.pad_or_trim(samples), n_mels=self.model.dims.n_mels, device=self.device)

    def _detect_language(self, windows) -> tuple[str, float]:
        import torch

        speech = np.concatenate([w.samples for w in windows])
        with torch.no_grad():
            _, probs = self.model.detect_language(self._mel(speech))
        language = max(probs, key=probs.get)
        return language, float(probs[language])

    def decode_windows(self, batch: Sequence[WindowJob]) -> list[list[Segment]]:
        """``whisper.decode`` over a stacked mel batch, one call per language, task and prompt
        (openai-whisper takes those per call, not per item); words are aligned window by window,
        so files with and without word timestamps share a call."""
        return decode_in_groups(batch, _group_key, self._decode_group, "openai-whisper")

    def _decode_group(self, jobs: Sequence[WindowJob]) -> list[list[Segment]]:
        import torch

        w = self._whisper
        first = jobs[0]
        o = first.options
        language = first.language or "en"
        tokenizer = w.tokenizer.get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task=o.task
        )
        mel = torch.stack([self._mel(job.window.samples) for job in jobs])
        best: list = [None] * len(jobs)
        best_rank: list = [None] * len(jobs)
        todo = list(range(len(jobs)))
        schedule = temperature_schedule(o.temperature)
        with torch.no_grad():
            for step, temperature in enumerate(schedule):
                # One sample when hot, as this engine's transcribe() does (whisper's API default).
                beams = o.beam_size if temperature == 0 and o.beam_size > 1 else None
                options = w.DecodingOptions(
                    task=o.task, language=language, temperature=temperature, prompt=o.initial_prompt,
                    without_timestamps=False, fp16=self.fp16, beam_size=beams,
                )
                if beams is not None:
                    # openai-whisper's decoder fails on a batch of several windows when it keeps
                    # several beams each: beam search goes one window at a time.
                    decoded = [w.decode(self.model, mel[i], options) for i in todo]
                else:
                    decoded = w.decode(self.model, mel[todo], options)
                again = []
                for i, r in zip(todo, decoded, strict=True):
                    q = _quality(r, tokenizer)
                    if best[i] is None or q.rank > best_rank[i]:
                        best[i], best_rank[i] = r, q.rank
                    if q.needs_fallback and step + 1 < len(schedule):
                        again.append(i)
                todo = again
                if not todo:
                    break
            out = []
            for k, (job, r) in enumerate(zip(jobs, best, strict=True)):
                silent = _quality(r, tokenizer).silent(o.vad_filter)
                segments = [] if silent else _split_tokens(r, tokenizer, job.window.duration_s)
                if job.options.word_timestamps and segments:
                    frames = min(job.window.samples.size // w.audio.HOP_LENGTH, w.audio.N_FRAMES)
                    w.timing.add_word_timestamps(
                        segments=segments, model=self.model, tokenizer=tokenizer, mel=mel[k],
                        num_frames=frames, last_speech_timestamp=0.0,
                    )
                q = _quality(r, tokenizer)
                out.append([_segment({**s, "avg_logprob": r.avg_logprob, "no_speech_prob": r.no_speech_prob,
                                      "temperature": r.temperature, "compression_ratio": q.compression_ratio})
                            for s in segments])
        return out


def _segment(s: dict) -> Segment:
    return segment_from_dict(s, s["avg_logprob"], s["no_speech_prob"], s.get("temperature"), s.get("compression_ratio"))


def _in_file_time(s: Segment, speech: Window) -> Segment:
    """A segment of the VAD's joined speech, in the time of the file it was cut from."""
    words = None
    if s.words is not None:
        words = tuple(
            replace(w, start=speech.file_time(w.start), end=speech.file_time(w.end, end=True)) for w in s.words
        )
    return replace(s, start=speech.file_time(s.start), end=speech.file_time(s.end, end=True), words=words)


TIME_PRECISION = 0.02  # seconds per timestamp token


def _quality(r, tokenizer) -> WindowQuality:
    """Whisper's checks on one of its DecodingResults (its tokens end with end-of-text)."""
    ratio = loop_ratio(r.tokens, tokenizer.timestamp_begin,
                       lambda piece: tokenizer.decode([t for t in piece if t < tokenizer.eot]))  # fmt: skip
    return WindowQuality(float(r.avg_logprob), float(r.no_speech_prob), ratio)


def _split_tokens(r, tokenizer, duration_s: float) -> list[dict]:
    """A window's tokens -> segments at its timestamp tokens (window time), as whisper.transcribe splits them."""
    tokens = list(r.tokens)
    begin = tokenizer.timestamp_begin
    consecutive = [i for i in range(1, len(tokens)) if tokens[i] >= begin and tokens[i - 1] >= begin]
    pieces: list[tuple[float, float, list[int]]] = []
    if consecutive:
        if len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]:
            consecutive.append(len(tokens))
        last = 0
        for cut in consecutive:
            part = tokens[last:cut]
            pieces.append(((part[0] - begin) * TIME_PRECISION, (part[-1] - begin) * TIME_PRECISION, part))
            last = cut
    else:
        stamps = [t for t in tokens if t >= begin]
        end = duration_s
        if stamps and stamps[-1] != begin:
            end = (stamps[-1] - begin) * TIME_PRECISION
        pieces.append((0.0, end, tokens))
    out = []
    for start, end, part in pieces:
        text = tokenizer.decode([t for t in part if t < tokenizer.eot])
        if start >= end or not text.strip():
            continue
        out.append(dict(seek=0, start=start, end=min(end, duration_s), tokens=part, text=text))
    return out


def _group_key(job: WindowJob) -> tuple:
    o = job.options
    return (job.language, o.task, o.beam_size, o.temperature, o.initial_prompt)
