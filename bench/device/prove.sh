#!/usr/bin/env bash
# The device pack's proof, on a machine without a GPU: a clean Python 3.12 venv holding only what
# the lent GPU machine's image holds (KINDS.md's versions, installed here from the registry: the
# stand-in for that image), then everything else from .devpack's parts alone (pip --no-index
# --no-deps, through bench/device/device.py as the GPU machine runs it), then the sweep's --quick
# form on this CPU. Build the parts first: .venv/bin/python bench/device/pack.py
set -euo pipefail
cd "$(dirname "$0")/../.."
PY312=${PY312:-python3.12}
VENV=${VENV:-/tmp/rt-devpack-proof/venv}
export RT_DEVPACK=${RT_DEVPACK:-/tmp/rt-devpack-proof/pack}
rm -rf "$VENV" "$RT_DEVPACK"
"$PY312" -m venv "$VENV"
# The GPU machine's image (the packages of it the pack relies on), not part of the pack.
"$VENV/bin/python" -m pip install -q numpy==2.5.2 tokenizers==0.23.2 onnxruntime==1.30.0 huggingface-hub==1.33.0 \
  requests pyyaml click filelock msgpack packaging protobuf attrs typing-extensions tqdm
"$VENV/bin/python" bench/device/device.py --cpu-quick
