#!/usr/bin/env bash
# Installs the system tools the project needs when they are missing.
#   scripts/system-deps.sh            uv and redis-server (demo and tests)
#   scripts/system-deps.sh --test     also chromium (the headless dashboard test)
# uv comes from PyPI into a virtual environment of its own under the user's cache
# ($UV_VENV; Debian's and Ubuntu's own Python refuse `pip install` outside one, PEP 668); the
# Makefile finds it there. The others come from Debian's packages.
set -euo pipefail

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

UV_VENV="${UV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/thrifty/uv-venv}"
if ! command -v uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1 \
    && ! "$UV_VENV/bin/uv" --version >/dev/null 2>&1; then
  echo "installing uv into $UV_VENV" >&2
  rm -rf "$UV_VENV"
  if ! python3 -m venv "$UV_VENV" >/dev/null 2>&1; then
    apt_install python3-venv  # Debian ships venv's pip bootstrap separately
    rm -rf "$UV_VENV"
    python3 -m venv "$UV_VENV"
  fi
  "$UV_VENV/bin/python" -m pip install --quiet uv
  "$UV_VENV/bin/uv" --version >&2
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server" >&2
  apt_install redis-server
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (headless dashboard tests)" >&2
  apt_install chromium
fi
