#!/usr/bin/env bash
# Installs the system tools the project needs when they are missing: uv, redis-server and
# chromium (the dashboard test drives it headless).
set -euo pipefail
if ! command -v uv >/dev/null 2>&1; then
  echo "installing uv" >&2
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (headless dashboard tests)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
