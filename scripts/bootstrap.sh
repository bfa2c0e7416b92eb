#!/usr/bin/env bash
# Installs everything ringcast needs on a Debian machine, idempotently:
# the Debian redis-server, redis-sentinel, prometheus, haproxy and chromium packages when they are missing, and a .venv
# with ringcast and its test extras at the exact versions of requirements.lock
# (the versions the suite was last green with; scripts/lock.sh refreshes it).
# Safe to run again; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "bootstrap: $*" >&2; exit 1; }

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || fail "no $PY found; ringcast needs Python 3.11 or newer (set PYTHON=/path/to/python3.X)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$("$PY" -V 2>&1) is too old; ringcast needs Python 3.11 or newer (set PYTHON=/path/to/python3.X)"
"$PY" -c 'import venv, ensurepip' 2>/dev/null \
  || fail "$PY has no venv/ensurepip; on Debian: apt-get install python3-venv"

apt_install() {
  # Debian packages only: anywhere else, say what is missing instead of guessing a package manager.
  if ! command -v apt-get >/dev/null 2>&1 || [ ! -f /etc/debian_version ]; then
    fail "this is not a Debian machine; install with your package manager: $* (Redis 7 or newer; Prometheus 2 with promtool; HAProxy 2.4 or newer), then run this again"
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "installing Debian packages ($*) needs root or sudo"
    sudo="sudo"
  fi
  echo "bootstrap: installing Debian packages: $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
  # The package starts a system redis on 6379; ringcast runs its own, so stop that one if it did.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi
if ! command -v redis-sentinel >/dev/null 2>&1; then
  apt_install redis-sentinel  # tests/node/test_sentinel.py starts its own sentinels (chaos/redis_topologies.py)
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-sentinel >/dev/null 2>&1 || true; fi
fi

# Prometheus and promtool: tests/ops checks the alert rules (promtool) and scrapes a local cluster with a real
# Prometheus. Without recommends: prometheus-node-exporter would listen on 0.0.0.0:9100.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  apt_install prometheus
  # The package may start a system prometheus on :9090; ringcast's tests run their own.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi

# HAProxy: tests/proxy runs the TLS proxy config `ringcast ctl proxy-config haproxy` generates (docs/security.md).
if ! command -v haproxy >/dev/null 2>&1; then
  apt_install haproxy
  # The package starts a system haproxy with its own config; ringcast's tests run their own.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now haproxy >/dev/null 2>&1 || true; fi
fi

# iproute2 (`ip`, `ss`): the fleet tests put hosts in network namespaces, and test_history_limits reads a
# socket's tcp_info with ss. Debian installs it by default; a minimal image may not have it.
if ! command -v ip >/dev/null 2>&1 || ! command -v ss >/dev/null 2>&1; then
  apt_install iproute2
fi

# Chromium: tests/browser drives the demo page and the browser client in Debian's chromium through Playwright,
# which is pointed at /usr/bin/chromium and never downloads a browser of its own.
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.ringcast-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  echo "bootstrap: installing ringcast and the locked versions of its dependencies into .venv" >&2
  log=.venv/pip-install.log
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the playwright package must not fetch browsers; the tests use Debian's chromium.
  if ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 .venv/bin/python -m pip install -c requirements.lock -e '.[test,reports]' >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "pip install failed; full log in $log"
  fi
  touch "$stamp"
fi
