"""Engine registry: ``load_engine(spec)`` builds the engine a spec names, with its model resident.

Engine libraries are imported lazily, inside the engine modules, so this package imports without
faster-whisper or torch installed; a missing library becomes a ModelLoadError at load time.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from raytranscribe.engines.base import SAMPLE_RATE, Engine, EngineSpec, Transcript, TranscribeOptions
from raytranscribe.errors import ModelLoadError, RayTranscribeError, Stage, TranscriptionError
from raytranscribe.names import ENGINES

if TYPE_CHECKING:  # the helpers below take arrays; specs and options import without numpy (the CLI's reads)
    import numpy as np

__all__ = [
    "ENGINES",
    "Engine",
    "EngineSpec",
    "SILENCE_PEAK",
    "compute_type_of",
    "gpu_name",
    "load_engine",
    "prepare_audio",
    "resolve_batch_size",
    "resolve_device",
    "temperature_schedule",
]

log = logging.getLogger(__name__)

# Peak amplitude at or below which audio counts as digital silence (about -80 dBFS). Whisper
# models hallucinate on pure zeros (tiny.en says " You"), so engines answer silence with an
# empty transcript without running the model.
SILENCE_PEAK = 1e-4

_INSTALL_HINT = {
    "faster-whisper": "pip install 'raytranscribe[faster]'",
    "openai-whisper": "pip install 'raytranscribe[openai]'",
}


def load_engine(spec: EngineSpec) -> Engine:
    """Build the engine ``spec.engine`` names, loading its model once.

    ``spec.engine`` is ``"faster-whisper"``, ``"openai-whisper"``, or ``"module.path:ClassName"``
    for an engine class defined elsewhere (built as ``ClassName(spec)``).

    Raises ModelLoadError (permanent, stage model-load) for an unknown engine name, a missing
    engine library, or a model that cannot be found or loaded; never a bare library exception.
    """
    builders: dict[str, Callable[[], type]] = {
        "faster-whisper": _faster_class,
        "openai-whisper": _openai_class,
    }
    if spec.engine in builders:
        cls = builders[spec.engine]()
    elif ":" in spec.engine:
        cls = _plugin_class(spec.engine)
    else:
        raise ModelLoadError(
            f"unknown engine {spec.engine!r}; choose from {list(ENGINES)} or name a class as 'module.path:ClassName'"
        )
    started = time.perf_counter()
    try:
        engine = cls(spec)
    except RayTranscribeError:
        raise
    except Exception as exc:  # an engine's own bug at start-up must still read as a load failure
        raise ModelLoadError(
            f"{spec.engine} could not load model {spec.model!r}: {type(exc).__name__}: {exc}"
        ) from exc
    log.info(
        "loaded %s model %r on %s in %.2f s",
        spec.engine, spec.model, getattr(engine, "device", spec.device), time.perf_counter() - started,
        extra={"stage": Stage.MODEL_LOAD.value},
    )
    return engine


def _plugin_class(ref: str) -> type:
    """An engine class named ``module.path:ClassName`` (third-party engines, test doubles)."""
    import importlib

    module_name, _, class_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"engine module {module_name!r} cannot be imported: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ModelLoadError(f"engine module {module_name!r} has no class {class_name!r}")
    return cls


def _faster_class() -> type:
    from raytranscribe.engines.faster import FasterWhisperEngine

    return FasterWhisperEngine


def _openai_class() -> type:
    from raytranscribe.engines.openai import OpenAIWhisperEngine

    return OpenAIWhisperEngine


def resolve_device(device: str, engine: str = "faster-whisper", gpu_ids: Sequence[str] = ()) -> str:
    """``"auto"`` -> ``"cuda"`` when the engine's library sees a GPU, else ``"cpu"``.

    faster-whisper asks CTranslate2 (``get_cuda_device_count``); openai-whisper asks torch.
    ``"cpu"`` passes through; anything else is a ModelLoadError.

    ``gpu_ids`` are the GPUs Ray reserved for the caller. With any, ``"auto"`` and ``"cuda"`` must get
    a CUDA device the engine can use: if its library sees none, or (faster-whisper) cannot load
    cuBLAS, this raises a ModelLoadError naming what is missing, rather than run on the CPU while
    holding a GPU. Only ``"cpu"`` runs on the CPU with a GPU reserved, as the operator's choice.
    """
    if device == "cpu" or (device == "cuda" and not gpu_ids):
        return device
    if device not in ("auto", "cuda"):
        raise ModelLoadError(f"unknown device {device!r}; choose 'auto', 'cuda' or 'cpu'")
    if engine == "openai-whisper":
        try:
            import torch
        except ImportError as exc:
            raise ModelLoadError(f"openai-whisper needs torch: {_INSTALL_HINT[engine]}") from exc
        seen = torch.cuda.is_available()
    else:
        try:
            import ctranslate2
        except ImportError as exc:
            raise ModelLoadError(f"faster-whisper is not installed: {_INSTALL_HINT['faster-whisper']}") from exc
        seen = ctranslate2.get_cuda_device_count() > 0
    if not gpu_ids:
        return "cuda" if seen else "cpu"
    missing = cuda_missing(engine)
    if not seen or missing:
        library = "torch" if engine == "openai-whisper" else "CTranslate2"
        reserved = f"reserved GPU {','.join(gpu_ids)}"
        if not seen:
            why = f"{'; '.join(missing)} not found" if missing else (
                "the driver and CUDA libraries load, so the driver may be too old for CUDA 12 (see nvidia-smi)"
            )
            problem = f"{reserved} but {library} sees no CUDA device: {why}"
        else:
            problem = f"{reserved} but {library} cannot use it: {'; '.join(missing)} not found"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise ModelLoadError(f"{problem}{where}; set device = cpu to run on the CPU on purpose")
    return "cuda"


# Shared libraries each engine loads at run time to use a GPU, beyond the driver's libcuda.so.1.
# CTranslate2's wheels (4.5 and later) dlopen cuBLAS 12 on first use; torch's wheels bring their own.
_CUDA_LIBRARIES: dict[str, tuple[str, ...]] = {
    "faster-whisper": ("libcublas.so.12",),
    "openai-whisper": (),
}


def cuda_missing(engine: str) -> list[str]:
    """The CUDA libraries ``engine`` needs that this process cannot load (as the engine's library
    would look for them: LD_LIBRARY_PATH and the linker cache), each named with what it is."""
    wanted = [("libcuda.so.1", "the NVIDIA driver")] + [(lib, "") for lib in _CUDA_LIBRARIES.get(engine, ())]
    missing = []
    for lib, what in wanted:
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append(f"{lib} ({what})" if what else lib)
    return missing


def gpu_name(gpu_ids: Sequence[str]) -> str:
    """The name of the first reserved GPU (``NVIDIA A10G``) as nvidia-smi reports it; "" when there
    is none or nvidia-smi is absent. Ray's GPU ids are the physical indices nvidia-smi uses."""
    smi = shutil.which("nvidia-smi")
    if not gpu_ids or smi is None:
        return ""
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader", "-i", str(gpu_ids[0])],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def compute_type_of(engine: Engine) -> str:
    """What the engine computes in: CTranslate2's compute type, or float16/float32 for torch."""
    compute_type = getattr(engine, "compute_type", None)
    if isinstance(compute_type, str):
        return compute_type
    fp16 = getattr(engine, "fp16", None)
    return "" if fp16 is None else ("float16" if fp16 else "float32")


def resolve_batch_size(spec: EngineSpec, device: str) -> int:
    """Windows per batched decode: ``spec.batch_size``, or the device's default when it is 0."""
    if spec.batch_size > 0:
        return spec.batch_size
    return spec.cuda_batch_size if device == "cuda" else spec.cpu_batch_size


def install_hint(engine: str) -> str:
    return _INSTALL_HINT[engine]


def temperature_schedule(temperature: float) -> tuple[float, ...]:
    """Whisper's fallback schedule starting at ``temperature``: 0.0 -> (0.0, 0.2, ..., 1.0).

    A decode that fails the compression-ratio / log-prob checks is retried hotter, which is what
    stops Whisper looping on a phrase; ``temperature`` is where that ladder starts.
    """
    steps = [round(temperature + 0.2 * i, 1) for i in range(6)]
    return tuple(t for t in steps if t <= 1.0) or (temperature,)


def prepare_audio(audio: np.ndarray, engine: str) -> np.ndarray:
    """The engine contract's input check: 1-D float32 samples at 16 kHz.

    A wrong shape is a caller bug, not a flaky device, so it is a permanent TranscriptionError.
    """
    import numpy as np

    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise TranscriptionError(
            f"{engine} needs 1-D mono audio at {SAMPLE_RATE} Hz, got an array of shape {audio.shape}",
            transient=False,
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise TranscriptionError(f"{engine} needs float32 samples in [-1, 1], got {audio.dtype}", transient=False)
    return np.ascontiguousarray(audio, dtype=np.float32)


def check_task(options: TranscribeOptions, multilingual: bool, spec: EngineSpec) -> None:
    """Refuse to translate with an English-only model (submit refuses models named ``*.en``; this
    catches one named otherwise): Whisper's tokenizer would drop the task and transcribe instead."""
    if options.task == "translate" and not multilingual:
        raise TranscriptionError(
            f"task translate needs a multilingual model: {spec.engine} model {spec.model!r} is English-only",
            transient=False,
        )


def is_silence(audio: np.ndarray) -> bool:
    import numpy as np

    return audio.size == 0 or float(np.max(np.abs(audio))) <= SILENCE_PEAK


def empty_transcript(audio: np.ndarray, spec: EngineSpec, options: TranscribeOptions, language: str | None) -> Transcript:
    return Transcript(
        segments=(),
        language=language,
        duration_s=audio.size / SAMPLE_RATE,
        engine=spec.engine,
        model=spec.model,
        options=options,
        speech_s=0.0 if options.vad_filter else None,  # digital silence: nothing for a VAD to keep
    )
