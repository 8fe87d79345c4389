"""Real speech on demand: espeak-ng, the synthesiser the committed samples were made with.

Tests use the clips committed under ``tests/fixtures/speech`` (made by ``python -m tests.support.tts``),
so the suite needs no synthesiser; benchmarks that need many clips (``bench/engines.py``) call
:func:`speak` and need ``espeak-ng`` on the PATH (``apt-get install espeak-ng``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from raytranscribe.audio import decode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"

# name -> (espeak-ng voice, sentence). Whisper base detects espeak-ng's Spanish and English voices
# right but not its German or French ones (it hears them as Yiddish and Thai), so German and French
# test a forced language and Spanish/English test detection.
SENTENCES: dict[str, tuple[str, str]] = {
    "es_greeting.flac": ("es", "Buenos días, ¿cómo estás? Hoy hace mucho calor en Madrid."),
    "es_football.flac": ("es", "Los niños juegan al fútbol en la plaza después de la escuela."),
    "en_station.flac": ("en", "The train leaves the station at seven in the evening."),
    "en_garden.flac": ("en", "My grandmother grows tomatoes and roses in her garden."),
    "de_book.flac": ("de", "Ich lese jeden Abend ein gutes Buch vor dem Schlafen."),
    "fr_coffee.flac": ("fr", "Nous buvons un café chaud dans le petit restaurant."),
}


def speak(text: str, voice: str = "en", speed_wpm: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice``, as 16 kHz mono float32."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed_wpm), "-w", str(wav), text], check=True, capture_output=True)
        return decode(wav).samples


def fixture(name: str) -> np.ndarray:
    return decode(FIXTURES / name).samples


def fixture_text(name: str) -> str:
    return SENTENCES[name][1]


def fixture_language(name: str) -> str:
    return SENTENCES[name][0]


def _make_fixtures() -> None:
    """Write the committed clips (needs espeak-ng and sox)."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("espeak-ng")
    for name, (voice, text) in SENTENCES.items():
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "speech.wav"
            subprocess.run([exe, "-v", voice, "-s", "160", "-w", str(wav), text], check=True)
            subprocess.run(["sox", str(wav), "-r", "16000", "-c", "1", str(FIXTURES / name)], check=True)


if __name__ == "__main__":
    _make_fixtures()
