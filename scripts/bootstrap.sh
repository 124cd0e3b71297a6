#!/usr/bin/env bash
# Install what is missing, and nothing else: Debian/Raspberry Pi OS packages for the
# real broker and database, then a virtualenv from requirements*.txt.
# Idempotent and quick when everything is already there.
#   scripts/bootstrap.sh          runtime + test dependencies
#   scripts/bootstrap.sh --runtime  runtime only (no test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
REQS="requirements-dev.txt"
[[ "${1:-}" == "--runtime" ]] && REQS="requirements.txt"

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "bootstrap: need root or sudo to install packages" >&2; exit 1; }
  SUDO="sudo"
fi

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]; }
have mosquitto       || missing+=(mosquitto)
have mosquitto_pub   || missing+=(mosquitto-clients)
have influxd         || missing+=(influxdb)
have influx          || missing+=(influxdb-client)
# A real server for the InfluxDB v2 write path in tests (InfluxDB 2.x is not in Debian).
[[ "$REQS" == "requirements.txt" ]] || have victoria-metrics || missing+=(victoria-metrics)
# Headless browser for the web page test (driven by Selenium through chromedriver).
[[ "$REQS" == "requirements.txt" ]] || have chromium || missing+=(chromium)
[[ "$REQS" == "requirements.txt" ]] || have chromedriver || missing+=(chromium-driver)
# Tests of deploy/: systemd-analyze (unit checks), shellcheck (scripts), openssl (certificates).
[[ "$REQS" == "requirements.txt" ]] || have systemd-analyze || missing+=(systemd)
[[ "$REQS" == "requirements.txt" ]] || have shellcheck || missing+=(shellcheck)
[[ "$REQS" == "requirements.txt" ]] || have openssl || missing+=(openssl)
"$PYTHON" -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)

if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt "$REQS" | sha256sum | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "bootstrap: preparing $VENV from $REQS"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
  echo "$want" > "$stamp"
fi
