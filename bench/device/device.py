"""On the lent GPU machine: gather the parts bench/device/pack.py built, then run the GPU checks.

    python3 bench/device/device.py            # one call per part; the call that completes the set runs
    python3 bench/device/device.py --cpu-quick   # here, all parts at once: install, sweep --quick and
                                                 # the GPU check's flow with a CPU actor, on the CPU

Each call carries one part (``.devpack/part-NN``) and the manifest; this keeps every verified part
outside the repository (``RT_DEVPACK``, default /tmp/rt-devpack), which lives as long as the machine
stays warm (30 s between calls), and says which part to carry next. Once all are there it re-joins
them, checks the whole by sha256, installs the wheels with ``pip --no-index --no-deps`` into a
folder of their own, and runs, each under a time limit, with the log also in ``$OUT/gpu-run.log``:

1. what the machine is: nvidia-smi, CTranslate2's CUDA device count, the CUDA libraries it lacks;
2. ``bench/gpu_check.py`` as a backfill would meet it: with no cuBLAS 12 there (the machine's CUDA
   is 13), the actor must refuse to start, naming ``libcublas.so.12``;
3. cuBLAS: the pack carries none (cuBLAS 12 alone is about 600 MB); the machine's cuBLAS 13 is
   offered under the 12 names (a folder of links on LD_LIBRARY_PATH). NOT a supported
   configuration: every figure after this line says so, and a transcript check against the CPU
   comes first;
4. the engines sweep (bench/device/sweep.py: tiny.en and base, batch 1/8/16/32, fitted and 30 s
   windows) and ``bench/gpu_check.py`` again.

Only the standard library is used until the wheels are in.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK = Path(os.environ.get("RT_DEVPACK", "/tmp/rt-devpack"))
LOG = Path(os.environ["OUT"]) / "gpu-run.log" if os.environ.get("OUT") else None
STEP_LIMITS_S = {"report": 30, "honest check": 90, "shim check": 60, "sweep": 330, "gpu check": 90}
# The call that runs the steps must end inside the device's 600 s a call (install and start included).
BUDGET_S = float(os.environ.get("RT_DEVPACK_BUDGET_S", "560"))
STARTED = time.monotonic()


def say(text: str) -> None:
    print(text, flush=True)
    if LOG is not None:
        with LOG.open("a") as f:
            f.write(text + "\n")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def gather() -> dict | None:
    """Keep the parts this call carried; the manifest once every part is here, else None."""
    PACK.mkdir(parents=True, exist_ok=True)
    carried = ROOT / ".devpack"
    if (carried / "manifest.json").exists():
        shutil.copy(carried / "manifest.json", PACK / "manifest.json")
    if not (PACK / "manifest.json").exists():
        raise SystemExit("no .devpack/manifest.json: carry it with every part (bench/device/pack.py builds both)")
    manifest = json.loads((PACK / "manifest.json").read_text())
    for part in manifest["parts"]:
        src, dst = carried / part["name"], PACK / part["name"]
        if src.exists() and not dst.exists():
            if sha256(src) != part["sha256"]:
                raise SystemExit(f"{part['name']} arrived damaged (sha256 differs): carry it again")
            shutil.copy(src, dst)
    have = [p["name"] for p in manifest["parts"] if (PACK / p["name"]).exists()]
    missing = [p["name"] for p in manifest["parts"] if p["name"] not in have]
    say(f"devpack: {len(have)} of {len(manifest['parts'])} parts here ({', '.join(have) or 'none'})")
    if missing:
        say(f"devpack: carry next: .devpack/{missing[0]} (with .devpack/manifest.json), within 30 s of this call")
        return None
    return manifest


def install(manifest: dict) -> Path:
    site = PACK / "site"
    if (PACK / "installed").exists():
        return site
    blob = PACK / "pack.tar"
    with blob.open("wb") as out:
        for part in manifest["parts"]:
            out.write((PACK / part["name"]).read_bytes())
    if sha256(blob) != manifest["sha256"]:
        raise SystemExit("the re-joined pack's sha256 differs from the manifest's: rebuild it")
    with tarfile.open(blob) as tar:
        tar.extractall(PACK / "x", filter="data")
    blob.unlink()
    wheels = sorted(str(p) for p in (PACK / "x" / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *wheels], check=True)  # fmt: skip
    (PACK / "installed").write_text(time.strftime("%F %T"))
    say(f"devpack: installed {len(wheels)} wheels into {site}")
    return site


def step(name: str, cmd: list[str], env: dict[str, str]) -> int:
    t0 = time.monotonic()
    limit = min(STEP_LIMITS_S[name], BUDGET_S - (t0 - STARTED))
    if limit < 15:
        say(f"\n=== {name}: skipped, {BUDGET_S - (t0 - STARTED):.0f} s of this call's budget left")
        return 124
    say(f"\n=== {name} (at most {limit:.0f} s): {' '.join(cmd)}")
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out, rc = out + f"\n[stopped at its limit of {limit:.0f} s]", 124
    say(out.rstrip())
    say(f"=== {name}: exit {rc} in {time.monotonic() - t0:.0f} s")
    return rc


def cublas13_shim() -> Path | None:
    """A folder whose libcublas.so.12 and libcublasLt.so.12 are links to this machine's cuBLAS 13."""
    roots = [p for p in sys.path if p.endswith("-packages")] + ["/usr/local/cuda/lib64", "/usr/local"]
    found: dict[str, str] = {}
    for lib in ("libcublas.so.13", "libcublasLt.so.13"):
        for root in roots:
            hits = sorted(glob.glob(f"{root}/**/{lib}*", recursive=True))
            if hits:
                found[lib] = hits[0]
                break
    if len(found) < 2:
        say(f"no cuBLAS 13 found to stand in ({found})")
        return None
    shim = PACK / "cublas12-shim"
    shim.mkdir(exist_ok=True)
    for lib, target in found.items():
        link = shim / lib.replace(".so.13", ".so.12")
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    say(f"SHIM: libcublas.so.12 -> {found['libcublas.so.13']} (cuBLAS 13 under the cuBLAS 12 name: "
        "not a supported configuration; figures below are indicative)")
    return shim


def main() -> int:
    manifest = gather()
    if manifest is None:
        return 0
    site = install(manifest)
    # RAY_ADDRESS=local: the GPU check starts a Ray of its own, never joins one found on the machine.
    env = {**os.environ, "PYTHONPATH": f"{site}:{ROOT}", "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0",
           "RAY_ADDRESS": "local"}
    py = sys.executable
    sets = str(PACK / "x" / "sets.npz")
    if "--cpu-quick" in sys.argv[1:]:  # the packaging proof on a machine without a GPU
        global BUDGET_S
        STEP_LIMITS_S["sweep"] = STEP_LIMITS_S["gpu check"] = BUDGET_S = 1800
        sweep = step("sweep", [py, "bench/device/sweep.py", "--quick", "--sets", sets], env)
        # Ray and the production worker from the parts too (a CPU actor: no GPU to reserve here).
        return sweep or step("gpu check", [py, "bench/gpu_check.py", "--num-gpus", "0", "--device", "cpu"], env)
    smi = "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv"
    step("report", ["bash", "-c", f"{smi}; {py} bench/device/sweep.py --report"], env)
    step("honest check", [py, "bench/gpu_check.py"], env)
    probe = [py, "-c", "import ctypes; ctypes.CDLL('libcublas.so.12'); print('libcublas.so.12 loads')"]
    if subprocess.run(probe, env=env, capture_output=True).returncode != 0:
        shim = cublas13_shim()
        if shim is None:
            return 1
        lib_dir = str(Path(os.readlink(shim / "libcublas.so.12")).parent)
        env["LD_LIBRARY_PATH"] = ":".join(x for x in (str(shim), lib_dir, env.get("LD_LIBRARY_PATH")) if x)
    step("shim check", [py, "bench/device/sweep.py", "--check", "--sets", sets], env)
    step("sweep", [py, "bench/device/sweep.py", "--device", "cuda", "--sets", sets], env)
    step("gpu check", [py, "bench/gpu_check.py"], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
