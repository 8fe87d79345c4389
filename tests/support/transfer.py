"""A download whose file lives only as long as a ``with`` block, for tests that read it once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from raytranscribe.transfer import Downloaded, Transfer


@contextlib.contextmanager
def downloading(transfer: Transfer, url: str, dest_dir: Path, name_hint: str = "input") -> Iterator[Downloaded]:
    """``transfer.download``, and the file is deleted when the block ends, however it ends."""
    downloaded = transfer.download(url, dest_dir, name_hint=name_hint)
    try:
        yield downloaded
    finally:
        downloaded.path.unlink(missing_ok=True)
