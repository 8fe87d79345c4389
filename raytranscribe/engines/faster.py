"""faster-whisper (CTranslate2) engine: the model is loaded once, in ``__init__``, and kept."""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    WINDOW_S,
    EngineSpec,
    PreparedAudio,
    Segment,
    Transcript,
    TranscribeOptions,
    WindowJob,
    Word,
    decode_in_groups,
    segment_from_dict,
)
from raytranscribe.engines.models import resolve_faster_whisper_model
from raytranscribe.engines.quality import WindowQuality, loop_ratio, no_speech_behind_vad
from raytranscribe.engines.windows import fixed_windows, speech_windows
from raytranscribe.errors import ModelLoadError, RayTranscribeError, Stage, TranscriptionError

if TYPE_CHECKING:  # faster-whisper is an optional extra: imported where the engine is built
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ENGINE_NAME = "faster-whisper"


def default_compute_type(device: str) -> str:
    """float16 on GPU (tensor cores, half the memory), int8 on CPU (fastest there)."""
    return "float16" if device == "cuda" else "int8"


def transcribe_kwargs(options: TranscribeOptions) -> dict:
    """``WhisperModel.transcribe`` keyword arguments for these options (benchmarks reuse them)."""
    return dict(
        language=options.language,
        task=options.task,
        beam_size=options.beam_size,
        vad_filter=options.vad_filter,
        word_timestamps=options.word_timestamps,
        initial_prompt=options.initial_prompt,
        temperature=list(temperature_schedule(options.temperature)),
    )


class FasterWhisperEngine:
    def __init__(self, spec: EngineSpec) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelLoadError(f"faster-whisper is not installed: {install_hint(ENGINE_NAME)}") from exc
        self.spec = spec
        self.device = resolve_device(spec.device, ENGINE_NAME)
        self.compute_type = default_compute_type(self.device) if spec.compute_type == "default" else spec.compute_type
        self.model_path = resolve_faster_whisper_model(spec.model, download_root=spec.download_root)
        try:
            self.model = WhisperModel(
                self.model_path,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=spec.cpu_threads,
                download_root=spec.download_root,
                local_files_only=True,  # resolve_faster_whisper_model already fetched anything remote
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad files, devices, types
            raise ModelLoadError(
                f"faster-whisper could not load model {spec.model!r} from {self.model_path} "
                f"on {self.device} ({self.compute_type}): {type(exc).__name__}: {exc}"
            ) from exc
        self.batch_size = resolve_batch_size(spec, self.device)
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        self._tokenizers_lock = threading.Lock()
        log.info(
            "faster-whisper %r resident on %s (%s)", spec.model, self.device, self.compute_type,
            extra={"stage": Stage.MODEL_LOAD.value},
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        audio = prepare_audio(audio, ENGINE_NAME)
        check_task(options, self.multilingual, self.spec)
        default_language = None if self.multilingual else "en"
        if is_silence(audio):
            return empty_transcript(audio, self.spec, options, options.language or default_language)
        kwargs = transcribe_kwargs(options)
        try:
            segments_iter, info = self.model.transcribe(audio, **kwargs)
            # The generator does the decoding: consume it here so its errors are ours to wrap.
            segments = tuple(_segment(s) for s in segments_iter)
            if options.vad_filter:  # the batched path's gate behind a VAD (faster-whisper applies Whisper's)
                segments = tuple(s for s in segments if not no_speech_behind_vad(s.no_speech_prob, s.avg_logprob))
        except Exception as exc:
            raise TranscriptionError(
                f"faster-whisper failed on {audio.size / SAMPLE_RATE:.2f} s of audio: {type(exc).__name__}: {exc}"
            ) from exc
        return Transcript(
            segments=segments,
            language=info.language,
            duration_s=audio.size / SAMPLE_RATE,
            engine=self.spec.engine,
            model=self.spec.model,
            options=options,
            language_probability=info.language_probability,
            speech_s=round(info.duration_after_vad, 3) if options.vad_filter else None,
        )

    # --- batched decoding (raytranscribe.batching) ----------------------------------------------

    def prepare(self, audio: np.ndarray, options: TranscribeOptions) -> PreparedAudio:
        """Cut ``audio`` into windows and settle its language (see BatchEngine.prepare)."""
        audio = prepare_audio(audio, ENGINE_NAME)
        check_task(options, self.multilingual, self.spec)
        duration = audio.size / SAMPLE_RATE
        forced = options.language if self.multilingual else "en"
        if is_silence(audio):
            return PreparedAudio(
                windows=(), language=forced, duration_s=duration, speech_s=0.0 if options.vad_filter else None
            )
        speech_s = None
        try:
            if options.vad_filter:
                most = self._window_s()  # VAD chunks capped at one window
                spans = vad.speech_spans(audio, max_chunk_s=most)
                windows = speech_windows(audio, spans, most)
                speech_s = vad.speech_seconds(spans)
            else:
                windows = fixed_windows(audio)
            language, probability = forced, (1.0 if forced else None)
            if windows and forced is None:
                language, probability = self._detect_language(windows)
        except RayTranscribeError:
            raise
        except Exception as exc:
            raise TranscriptionError(
                f"faster-whisper could not prepare {duration:.2f} s of audio: {type(exc).__name__}: {exc}"
            ) from exc
        return PreparedAudio(
            windows=windows, language=language, duration_s=duration, language_probability=probability,
            speech_s=speech_s,
        )

    def _window_s(self) -> float:
        """The most speech a VAD window holds: 30 s, or on a CPU with fitted windows CPU_VAD_WINDOW_S."""
        return CPU_VAD_WINDOW_S if self.device == "cpu" and self.spec.fit_windows else WINDOW_S

    def _detect_language(self, windows) -> tuple[str, float]:
        """The file's language from its first 30 s of speech, as sequential faster-whisper decides it
        (encoded as a fitted window, like the windows themselves)."""
        fe = self.model.feature_extractor
        speech = np.concatenate([w.samples for w in windows])[: fe.n_samples]
        features = self._features(speech, self._frames(speech.size / SAMPLE_RATE))[None]
        results = self.model.model.detect_language(self.model.encode(features))[0]
        token, probability = results[0]
        return token[2:-2], float(probability)  # "<|es|>" -> "es"

    def _frames(self, seconds: float) -> int:
        """Encoder input frames for windows up to ``seconds`` long: 30 s, or fitted (see FIT_PAD_S)."""
        fe = self.model.feature_extractor
        if not self.spec.fit_windows:
            return fe.nb_max_frames
        per_s = SAMPLE_RATE / fe.hop_length  # 100 frames a second
        steps = math.ceil((seconds + FIT_PAD_S) / FIT_STEP_S)
        return min(fe.nb_max_frames, int(steps * FIT_STEP_S * per_s))

    def _features(self, samples: np.ndarray, frames: int) -> np.ndarray:
        """Log-mel features of one window, ``frames`` long.

        Fitted windows are padded with silence before the spectrogram, as openai-whisper pads and
        as the model was trained: the padding is the spectrogram's floor. (faster-whisper pads the
        spectrogram with zeros instead, a faint constant noise to the model; 30 s windows keep that,
        so they stay word for word what sequential faster-whisper decodes.)
        """
        from faster_whisper.audio import pad_or_trim

        fe = self.model.feature_extractor
        if not self.spec.fit_windows:
            return pad_or_trim(fe(samples)[..., :-1], frames)
        padded = np.pad(samples, (0, max(0, frames * fe.hop_length - samples.size)))
        return fe(padded)[..., :frames]

    def _encode(self, features: np.ndarray):
        """The encoder's output for a batch of windows. On a CPU the windows are encoded one at a
        time (the same numbers): CTranslate2's CPU encoder spends 20-45 % more per window in a batch
        of 8 than alone (bench/experiments/README.md), while the decoder gains from the batch."""
        if self.device != "cpu" or len(features) == 1:
            return self.model.encode(features)
        import ctranslate2

        parts = [np.asarray(self.model.encode(features[i : i + 1])) for i in range(len(features))]
        return ctranslate2.StorageView.from_array(np.concatenate(parts))

    def _again(self, encoded, features: np.ndarray, todo: list[int]):
        """The encoder's output for windows ``todo`` of a batch, for their fallback decode: on a CPU
        their rows of the batch's output (what encoding them again would give, since the CPU encodes
        one window at a time); elsewhere encoded again, since a device's output cannot be sliced
        without a round trip through the host."""
        if self.device != "cpu":
            return self._encode(features[todo])
        import ctranslate2

        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[todo]))

    def decode_windows(self, batch: Sequence[WindowJob]) -> list[list[Segment]]:
        """One batched CTranslate2 decode over windows of any files and languages.

        Windows whose decoding parameters differ (beam size, temperature) go in separate generate
        calls, since CTranslate2 takes those per call; prompts (language, task, initial prompt) are
        per item, and words are aligned window by window, each with its own tokenizer, so files that
        translate, ask for word timestamps or carry a prompt share a call with files that do not.
        Windows of different fitted lengths go in separate calls too: each window is encoded at its
        own length, so its transcript never depends on what it was batched with.
        """
        return decode_in_groups(
            batch,
            lambda job: (_group_key(job), self._frames(job.window.duration_s), self._prompt_position(job)),
            self._decode_group,
            "faster-whisper",
        )

    def _prompt_position(self, job: WindowJob) -> int:
        """Where <|startoftranscript|> sits in the window's prompt (after its initial prompt's tokens).
        CTranslate2 needs it at one position in every item of a generate call, so windows whose
        initial prompts differ in length go in separate calls; windows without one share theirs."""
        initial = job.options.initial_prompt
        if not initial:
            return 0
        tokens = _prompt_tokens(self._tokenizer("transcribe", None), initial)
        return 1 + min(tokens, self.model.max_length // 2 - 1)  # sot_prev, then what get_prompt keeps

    def _tokenizer(self, task: str, language: str | None) -> Tokenizer:
        from faster_whisper.tokenizer import Tokenizer

        key = (task, language or "en")
        with self._tokenizers_lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = Tokenizer(
                    self.model.hf_tokenizer, self.multilingual, task=task, language=key[1]
                )
            return self._tokenizers[key]

    def _decode_group(self, jobs: Sequence[WindowJob]) -> list[list[Segment]]:
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        options = jobs[0].options  # the decoding parameters are one per group
        frames = self._frames(jobs[0].window.duration_s)  # one per group
        features = np.stack([self._features(job.window.samples, frames) for job in jobs])
        tokenizers = [self._tokenizer(job.options.task, job.language) for job in jobs]
        prompts = []
        for job, tokenizer in zip(jobs, tokenizers, strict=True):
            initial = job.options.initial_prompt
            previous = tokenizer.encode(" " + initial.strip()) if initial else []
            prompts.append(model.get_prompt(tokenizer, previous, without_timestamps=False))
        suppress = get_suppressed_tokens(tokenizers[0], [-1])
        encoder_output = first_pass = self._encode(features)

        # Temperature fallback, per window: only the windows that fail Whisper's checks
        # (too repetitive, or too unlikely) are decoded again, hotter, in a smaller batch.
        best: list[_Decoded | None] = [None] * len(jobs)
        todo = list(range(len(jobs)))
        schedule = temperature_schedule(options.temperature)
        for step, temperature in enumerate(schedule):
            if step > 0:
                encoder_output = self._again(first_pass, features, todo)
            decoded = self._generate(encoder_output, [prompts[i] for i in todo], [tokenizers[i] for i in todo],
                                     options, temperature, suppress)
            again = []
            for i, d in zip(todo, decoded, strict=True):
                if best[i] is None or d.rank > best[i].rank:
                    best[i] = d
                if d.needs_fallback and step + 1 < len(schedule):
                    again.append(i)
            todo = again
            if not todo:
                break

        out: list[list[dict]] = []
        for job, tokenizer, d in zip(jobs, tokenizers, best, strict=True):
            out.append(self._split(job, tokenizer, d))
        self._add_words(jobs, tokenizers, features, first_pass, out)
        return [[_window_segment(s, d) for s in segs] for segs, d in zip(out, best, strict=True)]

    def _generate(
        self,
        encoder_output: ctranslate2.StorageView,
        prompts: list[list[int]],
        tokenizers: list[Tokenizer],
        options: TranscribeOptions,
        temperature: float,
        suppress: Sequence[int],
    ) -> list[_Decoded]:
        model = self.model
        if temperature > 0:
            kwargs = dict(beam_size=1, num_hypotheses=BEST_OF, sampling_topk=0, sampling_temperature=temperature)
        else:
            kwargs = dict(beam_size=options.beam_size)
        results = model.model.generate(
            encoder_output,
            prompts,
            max_length=model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
            max_initial_timestamp_index=int(round(MAX_INITIAL_TIMESTAMP_S / model.time_precision)),
            **kwargs,
        )
        decoded = []
        for result, tok in zip(results, tokenizers, strict=True):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # length_penalty 1, as faster-whisper
            ratio = loop_ratio(tokens, tok.timestamp_begin, tok.decode)
            decoded.append(_Decoded(avg_logprob=float(avg_logprob), no_speech_prob=float(result.no_speech_prob),
                                    compression_ratio=ratio, tokens=tokens, temperature=temperature))  # fmt: skip
        return decoded

    def _split(self, job: WindowJob, tokenizer: Tokenizer, d: _Decoded) -> list[dict]:
        """Timestamp tokens -> segments (window time), skipping a window Whisper judges silent."""
        if d.silent(job.options.vad_filter):
            return []
        model = self.model
        frames = min(int(job.window.samples.size // model.feature_extractor.hop_length), model.feature_extractor.nb_max_frames)
        pieces, _, _ = model._split_segments_by_timestamps(
            tokenizer=tokenizer, tokens=d.tokens, time_offset=0.0, segment_size=frames,
            segment_duration=job.window.duration_s, seek=0,
        )
        out = []
        for p in pieces:
            text = tokenizer.decode(p["tokens"])
            if p["start"] == p["end"] or not text.strip():
                continue
            out.append(dict(seek=0, start=p["start"], end=p["end"], tokens=p["tokens"], text=text))
        return out

    def _add_words(self, jobs, tokenizers, features, encoded, segments: list[list[dict]]) -> None:
        """faster-whisper's own word alignment, one window at a time: its pass carries the last
        speech time from one segment list to the next, which across files would stop it trimming a
        first word that swallowed a leading silence.

        ``encoded``: the batch's encoder output. On a CPU each window's rows of it are reused (they
        are what encoding the window alone gives); elsewhere the window is encoded again, since a
        device's output cannot be sliced without a round trip through the host."""
        import ctranslate2

        if not any(job.options.word_timestamps for job in jobs):
            return
        fe = self.model.feature_extractor
        rows = np.asarray(encoded) if self.device == "cpu" else None
        for i, window_segments in enumerate(segments):
            if not window_segments or not jobs[i].options.word_timestamps:
                continue
            if rows is not None:
                encoder_output = ctranslate2.StorageView.from_array(np.ascontiguousarray(rows[i : i + 1]))
            else:
                encoder_output = self.model.encode(features[i : i + 1])
            size = min(jobs[i].window.samples.size // fe.hop_length, fe.nb_max_frames)
            self.model.add_word_timestamps(
                [window_segments], tokenizers[i], encoder_output, [size], PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
            )


def _segment(s) -> Segment:
    words = None
    if s.words is not None:
        words = tuple(Word(start=w.start, end=w.end, word=w.word, probability=w.probability) for w in s.words)
    return Segment(
        start=float(s.start),
        end=float(s.end),
        text=s.text.strip(),
        words=words,
        avg_logprob=s.avg_logprob,
        no_speech_prob=s.no_speech_prob,
        temperature=s.temperature,
        compression_ratio=s.compression_ratio,
    )


# Fitted windows (engine.fit_windows): Whisper pads every input to 30 s, but CTranslate2's encoder
# takes shorter ones, and its cost falls with the length. A window is encoded at its length plus
# FIT_PAD_S of silence, rounded up to FIT_STEP_S so that few distinct shapes occur (windows of one
# shape share a generate call), and never at a length that depends on its batch neighbours. The
# silence matters: the model was trained on speech that ends before its input does; with less of it
# small models more often loop or drop the last words of a clip (bench/experiments/README.md: 4 s
# of silence kept every run within 0.015 of the sequential path's WER).
FIT_PAD_S = 4.0
FIT_STEP_S = 2.0
# On a CPU, VAD windows hold at most 24 s of speech (28 s of input with FIT_PAD_S), not 30 s: the
# CPU encoder's cost per second of input climbs steeply past about 20 s (tiny.en int8: 15 ms a
# second of speech at 12-20 s of input, 21 at 24 s, 26 at 30 s), so more, shorter windows cost less
# in all (bench/experiments/README.md: the long file against faster-whisper's pipeline; shorter
# still lost words). Devices keep 30 s: not measured there, and there windows of one length share
# one generate call, which 30 s windows of speech do.
CPU_VAD_WINDOW_S = 24.0

# faster-whisper's defaults for what batched decoding does per window (WhisperModel.transcribe).
BEST_OF = 5  # sampled candidates per window once the fallback runs hot
MAX_INITIAL_TIMESTAMP_S = 1.0
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True, slots=True)
class _Decoded(WindowQuality):
    """One window's decode at one temperature: its tokens, and Whisper's checks on it."""

    tokens: list[int]
    temperature: float


@functools.lru_cache(maxsize=1024)  # a batch asks once per window; a backfill has few distinct prompts
def _prompt_tokens(tokenizer: Tokenizer, initial: str) -> int:
    """Tokens of an initial prompt, encoded as _decode_group encodes it (text tokens are the same
    whatever the task and language)."""
    return len(tokenizer.encode(" " + initial.strip()))


def _group_key(job: WindowJob) -> tuple:
    """What one generate call shares: everything else is per window."""
    o = job.options
    return (o.beam_size, o.temperature)


def _window_segment(s: dict, d: _Decoded) -> Segment:
    return segment_from_dict(s, d.avg_logprob, d.no_speech_prob, d.temperature, d.compression_ratio)
