"""raytranscribe: durable batch transcription on Ray GPU clusters.

``raytranscribe.Client`` is the Python API (see :mod:`raytranscribe.client`); it is imported on first
use, so ``import raytranscribe`` (and the command line's ``--help``) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["BackfillResult", "Client", "ExportResult", "Status", "SubmitResult", "__version__"]

# Each public name and the module it lives in.
_LAZY = {
    "BackfillResult": "raytranscribe.client", "Client": "raytranscribe.client", "Status": "raytranscribe.client",
    "SubmitResult": "raytranscribe.client", "ExportResult": "raytranscribe.export",
}  # fmt: skip

if TYPE_CHECKING:
    from raytranscribe.client import BackfillResult, Client, Status, SubmitResult
    from raytranscribe.export import ExportResult


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raytranscribe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
