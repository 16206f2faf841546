#!/usr/bin/env bash
# Set up ether-prep on a new machine: system FFmpeg (when missing), uv, and the locked Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1; then
  echo "setup: installing ffmpeg (torchcodec and whisperx need the system FFmpeg)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi
if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv" >&2
  python3 -m pip install --quiet "uv>=0.5"
  hash -r
fi
# --locked: exactly the tested set from uv.lock (the overrides in pyproject.toml need uv, not pip).
uv sync --locked --quiet
