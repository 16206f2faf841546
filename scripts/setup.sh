#!/usr/bin/env bash
# Set up ether-prep on a new machine: system FFmpeg (when missing), uv, and the locked Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1; then
  echo "setup: installing ffmpeg (torchcodec and whisperx need the system FFmpeg)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi
# Chromium (headless) opens the HTML report in the tests: screenshot, page width, requests leaving the page.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: chromium is missing and cannot be installed here (needs apt-get as root or sudo); the report's" \
         "browser test will be skipped" >&2
  else
    echo "setup: installing chromium (the report's browser test)" >&2
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      chromium >/dev/null || echo "setup: installing chromium failed; the report's browser test will be skipped" >&2
  fi
fi
if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv" >&2
  python3 -m pip install --quiet "uv>=0.5"
  hash -r
fi
# --locked: exactly the tested set from uv.lock (the overrides in pyproject.toml need uv, not pip).
uv sync --locked --quiet
