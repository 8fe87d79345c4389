"""The node-local model cache, worker side: one verified copy of each model per node.

A model stored in S3 reaches a worker as a :class:`~raytranscribe.contracts.ModelManifest`
(presigned GETs, sizes, ETags: no credentials). :meth:`ModelCache.materialise` turns it into a local
folder the engine loads:

* the folder's name is a hash of the model's URI, layout and every file's name, size and ETag, so a
  model changed in S3 is a new entry and never a stale hit;
* each file is streamed to a temporary name inside a private staging folder, checked (size, and MD5
  where the ETag is one), then renamed to its own name; the whole folder is published by one
  ``rename`` once complete. A torn or partial download is never under the final name, so it is
  never loaded;
* an exclusive ``fcntl.flock`` per entry means the actors of one node download it once: the others
  wait for the lock and find the published folder. The kernel drops the lock of a process that dies,
  and the next holder clears the dead one's staging folder;
* :class:`LoadProgress` says how far it got (bytes done of total) from any thread, also while this
  process waits for another one's download: the worker's ``loading`` state reads it.

Hugging Face ids and openai-whisper names use the same root (:meth:`ModelCache.hub_dir` as the
engines' ``download_root``), so a node fetches those once too.

Imports no boto3, SQL or Ray. :class:`~raytranscribe.transfer.Transfer` (requests) is imported where
a download starts, so that the locking and publishing here stay usable from modules that must not
import an HTTP client (the engines, for their own bundled-model assembly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from raytranscribe.config import TransferSettings
from raytranscribe.contracts import LoadPhase, ModelLayout, ModelLoadState, ModelManifest, pick_model_files
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import ModelDownloadError, ModelLoadError, Stage, TransferError, TruncatedBody
from raytranscribe.uris import SCHEME

log = logging.getLogger(__name__)

DEFAULT_DIR_NAME = "raytranscribe-models"
MANIFEST_NAME = ".manifest.json"  # written last into the staging folder: what a cache hit is checked against
_STAGING_PREFIX = ".tmp-"
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_CHUNK = 8 * 1024 * 1024
PROGRESS_LOG_S = 10.0  # how often a download in progress is logged
_EXTRA = {"stage": Stage.MODEL_LOAD.value}


def cache_root(configured: str | os.PathLike[str] | None) -> Path:
    """``engine.model_cache_dir``, or ``raytranscribe-models`` in this node's temp dir when unset.

    Resolved on the node that uses it (the driver's temp dir may not exist on a worker)."""
    return Path(configured).expanduser() if configured else Path(tempfile.gettempdir()) / DEFAULT_DIR_NAME


class LoadProgress:
    """How far a materialise is: written by the thread that runs it, read by any other (a ping).

    ``bytes_done`` is measured on disk (the sizes of the files in the staging folders of this cache
    entry), so it is right whoever downloads: this process, or the neighbour it waits for.
    """

    def __init__(self) -> None:
        self.uri: str | None = None
        self.total_bytes = 0
        self.phase: LoadPhase | None = None  # None: not started
        self.cache_hit: bool | None = None  # known once READY
        self._watch: tuple[Path, str] | None = None  # (folder, staging-folder prefix) to measure

    def watch(self, folder: Path, prefix: str) -> None:
        """Measure ``bytes_done`` on the staging folders named ``prefix*`` in ``folder``."""
        self._watch = (folder, prefix)

    @property
    def bytes_done(self) -> int:
        if self.phase is LoadPhase.READY:
            return self.total_bytes
        watch = self._watch
        if watch is None:
            return 0
        root, prefix = watch
        done = 0
        with contextlib.suppress(OSError):  # a staging folder may vanish (renamed, cleared) mid-scan
            for staging in root.glob(prefix + "*"):
                done = max(done, _folder_bytes(staging))
        return min(done, self.total_bytes) if self.total_bytes else done

    def snapshot(self) -> ModelLoadState:
        """Plain data for a ping reply (and its ``describe()`` for the progress log)."""
        return ModelLoadState(self.phase, self.bytes_done, self.total_bytes, self.cache_hit)


def _folder_bytes(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


# --- publishing a folder once per node -----------------------------------------------------------


@contextlib.contextmanager
def node_lock(lock_path: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created if missing), held for the block.

    ``on_wait`` is called once if another process holds it. The lock file is never deleted:
    unlinking a lock file others may hold open would let two holders in at once.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder finishes or dies
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def publish_once(
    final: Path,
    build: Callable[[Path], None],
    *,
    is_complete: Callable[[Path], bool] = Path.is_dir,
    on_wait: Callable[[], None] | None = None,
) -> bool:
    """Make ``final`` exist, built by ``build(staging_folder)`` at most once per node at a time.

    ``build`` fills a fresh staging folder next to ``final``; the folder is renamed to ``final``
    when ``build`` returns, and removed if it raises. Returns True if this call built it, False if
    it was there (a cache hit, possibly after waiting for another process's build). An existing
    ``final`` that fails ``is_complete`` (a file deleted by hand, a disk that lost data) is replaced.
    """
    if final.is_dir() and is_complete(final):
        return False
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with node_lock(parent / f"{final.name}.lock", on_wait=on_wait):
        if final.exists():
            if final.is_dir() and is_complete(final):
                return False
            log.warning("cache entry %s is incomplete: replacing it", final, extra=_EXTRA)
            _remove(final)
        # Holding the lock, so any staging folder of this entry belongs to a process that died.
        for stale in parent.glob(f"{_STAGING_PREFIX}{final.name}-*"):
            log.info("removing %s left by an interrupted download", stale, extra=_EXTRA)
            _remove(stale)
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f"{_STAGING_PREFIX}{final.name}-"))
        try:
            build(staging)
            os.rename(staging, final)
        except BaseException:
            _remove(staging)
            raise
        _fsync_dir(parent)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        # Renamed aside first, so a crash mid-removal never leaves a half-deleted folder under its name.
        aside = path.with_name(f"{_STAGING_PREFIX}{path.name}-removing-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, aside)
        except OSError:
            aside = path
        shutil.rmtree(aside, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- models from S3 ------------------------------------------------------------------------------


def entry_name(manifest: ModelManifest) -> str:
    """The cache folder's name: readable slug + hash of URI, layout and every file's name/size/ETag."""
    h = hashlib.sha256()
    h.update(manifest.uri.encode())
    h.update(b"\0" + manifest.layout.value.encode())
    for f in sorted(manifest.files, key=lambda f: f.name):
        h.update(f"\0{f.name}\0{f.size}\0{f.etag}".encode())
    slug = _SLUG.sub("_", manifest.uri.removeprefix(SCHEME).rstrip("/").replace("/", "_"))[-48:].strip("._-")
    return f"{slug or 'model'}-{h.hexdigest()[:16]}"


class ModelCache:
    """One node's model cache under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str] | None = None, transfer: TransferSettings | None = None) -> None:
        self.root = cache_root(root)
        self.transfer_settings = transfer or TransferSettings()

    @property
    def s3_dir(self) -> Path:
        return self.root / "s3"

    def hub_dir(self, engine: str) -> Path:
        """``download_root`` for models the engine library downloads itself (Hub ids, openai names)."""
        return self.root / "hub" / _SLUG.sub("_", engine)

    def path_for(self, manifest: ModelManifest) -> Path:
        """Where ``manifest``'s folder is (or will be) published."""
        return self.s3_dir / entry_name(manifest)

    def lookup(self, manifest: ModelManifest) -> Path | None:
        """The local path to load if the model is already cached, else None; no lock, no download."""
        final = self.path_for(manifest)
        return _load_path(final, manifest) if final.is_dir() and _matches(final, manifest) else None

    def materialise(self, manifest: ModelManifest, progress: LoadProgress | None = None) -> Path:
        """The local path to load (the folder, or the ``.pt`` in it), downloading the model if this
        node has no verified copy yet. Raises :class:`ModelDownloadError` (HTTP status, size or MD5
        mismatch) or :class:`ModelLoadError` (the files are not the model they claim to be); nothing
        is then left under the final name."""
        progress = progress if progress is not None else LoadProgress()
        final = self.path_for(manifest)
        progress.uri, progress.total_bytes = manifest.uri, manifest.total_bytes
        progress.watch(final.parent, f"{_STAGING_PREFIX}{final.name}-")
        started = time.monotonic()

        def waiting() -> None:
            progress.phase = LoadPhase.WAITING
            log.info("model %s: another process on this node is downloading it; waiting", manifest.uri, extra=_EXTRA)

        def build(staging: Path) -> None:
            progress.phase = LoadPhase.DOWNLOADING
            free = shutil.disk_usage(staging).free
            if free < manifest.total_bytes:
                raise ModelDownloadError(
                    f"model {manifest.uri}: needs {manifest.total_bytes / 1e9:.2f} GB, the node cache "
                    f"{self.root} has {free / 1e9:.2f} GB free (set engine.model_cache_dir to a larger disk)"
                )
            self._download(manifest, staging, progress)

        with _progress_logged(progress):
            try:
                built = publish_once(final, build, is_complete=lambda p: _matches(p, manifest), on_wait=waiting)
            except OSError as exc:  # the cache folder itself: permissions, a read-only or full disk
                raise ModelLoadError(
                    f"model {manifest.uri}: cannot use the node cache {self.root}: {exc.strerror or exc}"
                ) from exc
        progress.cache_hit = not built
        progress.phase = LoadPhase.READY
        if built:
            seconds = time.monotonic() - started
            log.info(
                "model %s: downloaded %d bytes in %.1f s (%.1f MB/s) to %s",
                manifest.uri, manifest.total_bytes, seconds, manifest.total_bytes / 1e6 / max(seconds, 1e-6), final,
                extra=_EXTRA,
            )  # fmt: skip
        else:
            log.info("model %s: found in the node cache at %s", manifest.uri, final, extra=_EXTRA)
        return _load_path(final, manifest)

    def _download(self, manifest: ModelManifest, staging: Path, progress: LoadProgress) -> None:
        from raytranscribe.transfer import Transfer  # here, not at the top: see the module docstring

        # Models are not inputs: the input size cap must not refuse a 3 GB model.bin, but nothing
        # larger than the listed size is accepted either.
        largest = max((f.size for f in manifest.files), default=0)
        settings = self.transfer_settings.model_copy(update={"max_download_bytes": max(largest, 1)})
        with Transfer(settings) as transfer:
            for f in manifest.files:
                progress.phase = LoadPhase.DOWNLOADING
                try:
                    got = transfer.download(f.url, staging, name_hint=f.name)
                except TruncatedBody as exc:
                    raise ModelDownloadError(
                        f"model {manifest.uri}: {f.name}: size mismatch, the download ended before the "
                        f"{f.size} bytes listed ({exc.message})",
                        http_status=exc.http_status,
                    ) from exc
                except TransferError as exc:
                    raise ModelDownloadError(
                        f"model {manifest.uri}: cannot download {f.name}: {exc.message}", http_status=exc.http_status
                    ) from exc
                if got.size != f.size:
                    got.path.unlink(missing_ok=True)
                    raise ModelDownloadError(
                        f"model {manifest.uri}: {f.name}: size mismatch, "
                        f"downloaded {got.size} bytes, S3 listed {f.size}"
                    )
                if f.md5:
                    progress.phase = LoadPhase.VERIFYING
                    digest = _md5(got.path)
                    if digest != f.md5:
                        got.path.unlink(missing_ok=True)
                        raise ModelDownloadError(
                            f"model {manifest.uri}: {f.name}: MD5 mismatch, downloaded {digest}, ETag says {f.md5}"
                        )
                os.replace(got.path, staging / f.name)
        _check_layout(staging, manifest)
        record = {
            "uri": manifest.uri,
            "layout": manifest.layout.value,
            "files": {f.name: {"size": f.size, "etag": f.etag} for f in manifest.files},
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(record, indent=1, sort_keys=True))


@contextlib.contextmanager
def _progress_logged(progress: LoadProgress) -> Iterator[None]:
    """Log how far a long download got every PROGRESS_LOG_S (the actor's log is what a dashboard shows)."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(PROGRESS_LOG_S):
            log.info("model %s: %s", progress.uri, progress.snapshot().describe(), extra=_EXTRA)

    thread = threading.Thread(target=report, name="model-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_layout(folder: Path, manifest: ModelManifest) -> None:
    """The downloaded files are the model the layout says, as far as cheap checks tell (before publishing)."""
    where = manifest.uri
    pick_model_files((p.name for p in folder.iterdir()), manifest.layout, where)  # every required file arrived
    if manifest.layout is ModelLayout.CTRANSLATE2:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"model {where}: config.json is not JSON: not a CTranslate2 model ({exc})") from exc
        if not isinstance(config, dict):
            raise ModelLoadError(f"model {where}: config.json is not a JSON object: not a CTranslate2 model")


def _matches(final: Path, manifest: ModelManifest) -> bool:
    """A published folder is what ``manifest`` describes: its record agrees and every file has its size.

    Sizes only: re-hashing gigabytes on every actor start would cost more than it protects (the
    folder was verified before it was published, and publishing is one rename)."""
    try:
        record = json.loads((final / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = record["files"]
        return all(
            files.get(f.name, {}).get("etag") == f.etag and (final / f.name).stat().st_size == f.size
            for f in manifest.files
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _load_path(final: Path, manifest: ModelManifest) -> Path:
    name = manifest.load_name
    return final / name if name else final


# --- what the worker calls -----------------------------------------------------------------------


def engine_spec_on_node(
    spec: EngineSpec, manifest: ModelManifest | None, cache: ModelCache, progress: LoadProgress | None = None
) -> EngineSpec:
    """The spec ``load_engine`` gets on this node.

    A model from S3 (``manifest``, presigned by the driver) is materialised in the cache and named by
    its local path; a model the engine library downloads itself (a Hub id, an openai-whisper name)
    gets the cache's hub folder as ``download_root`` unless one is set, so a node fetches it once.
    Runs before the engine loads, in the actor's start-up: its errors are start-up failures.
    """
    if manifest is not None:
        if manifest.uri.rstrip("/") != spec.model.rstrip("/"):
            raise ModelLoadError(f"the actor for model {spec.model} was handed the files of {manifest.uri}")
        spec = dataclasses.replace(spec, model=str(cache.materialise(manifest, progress)))
    elif spec.model.startswith(SCHEME):
        raise ModelLoadError(
            f"model {spec.model} reached the worker without presigned URLs (workers hold no credentials: "
            "the driver lists it with S3Storage.model_files)"
        )
    if spec.download_root is None:
        spec = dataclasses.replace(spec, download_root=str(cache.hub_dir(spec.engine)))
    return spec

