#!/usr/bin/env bash
# Refreshes requirements.lock: every package ringcast and its test extras need,
# at exact versions, resolved from pyproject.toml's ranges by pip-tools in a
# throwaway venv (pip-tools is not a dependency of ringcast). Run it when you
# change pyproject.toml's dependencies or want newer releases, then run
# `make test` and commit the lock only if the suite is green with it.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
"${PYTHON:-python3}" -m venv "$tools"
"$tools/bin/python" -m pip install -q "pip-tools>=7.4"
"$tools/bin/pip-compile" -q --upgrade --all-extras --strip-extras --no-emit-index-url --no-emit-find-links \
  --no-emit-trusted-host --output-file requirements.lock pyproject.toml
echo "lock: wrote requirements.lock; now run make test" >&2
