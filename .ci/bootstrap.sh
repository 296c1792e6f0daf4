#!/usr/bin/env bash
# Create .venv and install everything askshift needs, Debian packages included.
# Idempotent: a stamp keyed on pyproject.toml and this script makes a second run take ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium: the headless browser of tests/test_ui_browser.py (the Prefect UI in a real browser).
DEB_PKGS="pkg-config libopencv-dev libturbojpeg0-dev slurmctld slurmd slurm-client munge chromium"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

missing=""
for p in $DEB_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[bootstrap] apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "[bootstrap] missing Debian packages:$missing (run as root or: sudo apt-get install$missing)" >&2
    case "$missing" in *libopencv-dev*|*libturbojpeg0-dev*|*pkg-config*) exit 1;; esac
  fi
fi

stamp=.venv/.askshift-installed
want=$(cat pyproject.toml .ci/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "[bootstrap] installing Python packages into .venv (first time: ~8 min)"
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip check
echo "$want" > "$stamp"
