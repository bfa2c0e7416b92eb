"""`ringcast --version`: the installed distribution's version, from a real process (ringcast_cli.py)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

from chaos.cluster import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringcast_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_version_prints_the_installed_package_version():
    for flag in ("--version", "-V"):
        result = run_cli(flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"ringcast {importlib.metadata.version('ringcast')}\n"
        assert re.fullmatch(r"ringcast \d+\.\d+\.\d+\S*\n", result.stdout)


def test_the_usage_mentions_it():
    assert "ringcast --version" in run_cli("--help").stdout
