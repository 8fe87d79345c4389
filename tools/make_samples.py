"""Regenerate the speech samples in ``raytranscribe/samples/`` with espeak-ng and PyAV.

    .venv/bin/python tools/make_samples.py

espeak-ng speaks each known sentence into a WAV (22.05 kHz mono); PyAV re-encodes it into the
container/codec of the sample name, at a rate and channel layout chosen so the decoder has real
work to do (resampling, down-mixing). ``sentences.json`` maps file name -> exact sentence.
The outputs are committed: tests must not depend on espeak-ng being installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "raytranscribe" / "samples"

# Slower than espeak's default 175 wpm: tiny.en mishears a fast robot (WER 0.3-0.4 at 140-160 wpm).
ESPEAK_SPEED_WPM = 120
ESPEAK_VOICE = "en-us"


@dataclass(frozen=True)
class SampleSpec:
    name: str
    sentence: str
    container: str  # PyAV/FFmpeg muxer name
    codec: str
    rate: int
    layout: str  # "mono" | "stereo"
    bit_rate: int | None = None


SAMPLES: tuple[SampleSpec, ...] = (
    SampleSpec("fox.wav", "The quick brown fox jumps over the lazy dog.", "wav", "pcm_s16le", 22050, "mono"),
    SampleSpec("doctor.flac", "Please call the doctor before noon tomorrow.", "flac", "flac", 44100, "stereo"),
    SampleSpec("river.mp3", "We walked along the river and watched the boats.", "mp3", "libmp3lame", 24000, "mono", 32_000),
    SampleSpec("children.ogg", "The children played in the park after school.", "ogg", "libopus", 48000, "mono", 24_000),
    SampleSpec("library.m4a", "The library opens early on Monday morning.", "ipod", "aac", 44100, "stereo", 96_000),
    SampleSpec("lights.webm", "Turn off the lights when you leave the room.", "webm", "libopus", 48000, "stereo", 24_000),
)


def speak(sentence: str, wav_path: Path) -> None:
    subprocess.run(
        ["espeak-ng", "-v", ESPEAK_VOICE, "-s", str(ESPEAK_SPEED_WPM), "-w", str(wav_path), sentence],
        check=True,
        capture_output=True,
    )


def read_pcm(wav_path: Path) -> tuple[np.ndarray, int]:
    """espeak's WAV as int16 mono samples and its rate."""
    with av.open(str(wav_path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    return np.concatenate(chunks).astype(np.int16), rate


def encode(spec: SampleSpec, pcm: np.ndarray, pcm_rate: int, out_path: Path) -> None:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = pcm_rate
    # Strip encoder/creation-time tags so regenerating gives the same bytes where the codec allows.
    with av.open(str(out_path), "w", format=spec.container, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(spec.codec, rate=spec.rate, layout=spec.layout)
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        fmt = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=fmt, layout=spec.layout, rate=spec.rate, frame_size=stream.codec_context.frame_size or None)
        for resampled in (*resampler.resample(frame), *resampler.resample(None)):
            resampled.pts = None
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sentences: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in SAMPLES:
            wav = Path(tmp) / "speech.wav"
            speak(spec.sentence, wav)
            pcm, rate = read_pcm(wav)
            target = args.out / spec.name
            encode(spec, pcm, rate, target)
            sentences[spec.name] = spec.sentence
            print(f"{spec.name:14s} {len(pcm) / rate:5.2f} s  {target.stat().st_size:7d} bytes  {spec.codec} {spec.rate} Hz {spec.layout}")
    (args.out / "sentences.json").write_text(json.dumps(sentences, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
