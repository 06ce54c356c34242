#!/usr/bin/env bash
# Installs the system tools the project needs when they are missing.
#   scripts/system-deps.sh            uv and redis-server (demo and tests)
#   scripts/system-deps.sh --test     also chromium (the headless dashboard test)
# uv comes from PyPI into the running Python (`python3 -m uv` works wherever pip put it);
# the others from Debian's packages.
set -euo pipefail

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1; then
  echo "installing uv" >&2
  python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server" >&2
  apt_install redis-server
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (headless dashboard tests)" >&2
  apt_install chromium
fi
