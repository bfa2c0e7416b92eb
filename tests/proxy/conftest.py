"""Fixtures of the proxy tests: a throwaway certificate and real HAProxy processes.

`start_haproxy(cfg_path, port)` runs Debian's `haproxy -W -db -f CFG` (master-worker in the foreground)
and waits until it accepts on 127.0.0.1:port; `reload()` re-reads the file; after the test the master
is stopped by its PID (it stops its workers), like every process the suite starts
(chaos.cluster.stop_process).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.proxy.certs import ProxyCertificate, make_certificate
from tests.proxy.haproxy import HaproxyProcess


@pytest.fixture
def proxy_cert(tmp_path) -> ProxyCertificate:
    return make_certificate(tmp_path)


@pytest.fixture
def start_haproxy():
    started: list[HaproxyProcess] = []

    def start(cfg_path: Path, port: int) -> HaproxyProcess:
        proxy = HaproxyProcess(cfg_path, port)
        started.append(proxy)
        return proxy.wait_listening()

    yield start
    for proxy in started:
        proxy.stop()
