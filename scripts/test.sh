#!/usr/bin/env bash
# The README's test command: make a virtualenv, install the package with every extra, run pytest.
# torch goes in first, pinned, so openai-whisper does not pull another release (PIP_EXTRA_INDEX_URL: see docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# sox makes the GSM 6.10 and 16-channel files the decode tests read (FFmpeg encodes neither).
if ! command -v sox >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq sox >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all,test]"
exec .venv/bin/python -m pytest "$@"
