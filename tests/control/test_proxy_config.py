"""control.proxy_config and `ringcast ctl proxy-config haproxy`: the HAProxy configuration made from a ring.

Generation is pure and checked line by line; every generated configuration is also checked by the real
`haproxy -c` (Debian's haproxy, scripts/bootstrap.sh). The command reads a ring from a stub operator API.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from control import ctl
from control.proxy_config import HaproxyOptions, ProxyConfigError, haproxy_config, routes
from tests.proxy.certs import make_certificate


def member(name: str, port: int, url: str | None = None, address: str | None = None, weight: int = 1) -> dict:
    return {"id": f"edge-a:{port}", "url": url or f"wss://proxy.example.com/w/{name}", "weight": weight,
            "address": f"10.0.0.5:{port}" if address is None else address}


RING = {"epoch": 7, "members": [member("edge-a-1", 8701), member("edge-a-0", 8700)]}


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


def options(cert, **overrides) -> HaproxyOptions:
    return HaproxyOptions(cert_path=str(cert.pem_with_key), bind="127.0.0.1:8443", **overrides)


def haproxy_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy not found: run scripts/bootstrap.sh (installs the Debian package)")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


def test_each_member_gets_a_backend_by_its_url_path_rewritten_to_ws(cert, tmp_path):
    text = haproxy_config(RING, options(cert))
    lines = [line.split("#")[0].rstrip() for line in text.splitlines()]
    assert f"    bind 127.0.0.1:8443 ssl crt {cert.pem_with_key} alpn http/1.1" in lines
    assert "    option forwardfor" in lines
    assert "    use_backend ringcast_route if { path /route /ring }" in lines
    uses = [line for line in lines if line.startswith("    use_backend w_")]
    assert uses == ["    use_backend w_edge-a-0 if { path /w/edge-a-0 }",
                    "    use_backend w_edge-a-1 if { path /w/edge-a-1 }"]
    backend = text.split("backend w_edge-a-1\n", 1)[1].split("\n\n", 1)[0]
    assert "http-request set-path /ws" in backend
    assert "server edge-a:8701 10.0.0.5:8701 check" in backend
    assert "timeout tunnel 3600s" in text
    # /route and /ring go to every routable worker, health-checked by /readyz
    route = text.split("backend ringcast_route\n", 1)[1].split("\n\n", 1)[0]
    assert "option httpchk GET /readyz" in route
    assert "server edge-a:8700 10.0.0.5:8700 check" in route and "server edge-a:8701 10.0.0.5:8701 check" in route
    assert "%HP" in text and "%r" not in text and "%HU" not in text  # no query strings (tokens) in the logs
    result = haproxy_check(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_route_backends_replace_the_workers_for_route_and_ring(cert, tmp_path):
    text = haproxy_config(RING, options(cert, route_backends=("10.0.0.9:8800", "[fd00::9]:8800")))
    route = text.split("backend ringcast_route\n", 1)[1].split("\n\n", 1)[0]
    assert "server router0 10.0.0.9:8800 check" in route and "server router1 [fd00::9]:8800 check" in route
    assert "GET /healthz" in route and "10.0.0.5" not in route
    result = haproxy_check(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_members_the_proxy_cannot_reach_by_path_are_skipped_with_a_comment(cert, tmp_path):
    ring = {"epoch": 1, "members": [
        member("edge-a-0", 8700),
        member("x", 8701, url="ws://10.0.0.5:8701/ws"),  # default --public-url: not behind this proxy
        member("x", 8702, url="wss://proxy.example.com/w/a/b"),  # a path name with a slash
        member("x", 8703, url="wss://proxy.example.com/w/a%20b"),
        member("x", 8704, url="wss://proxy.example.com/w/"),
        member("edge-b-0", 8705, address=""),  # no internal address
        member("edge-b-1", 8706, address="no port"),
    ]}
    found, skipped = routes(ring, "/w/")
    assert [r.name for r in found] == ["edge-a-0"]
    assert len(skipped) == 6
    text = haproxy_config(ring, options(cert))
    assert text.count("    # skipped edge-a:") == 6
    assert "does not start with '/w/'" in text and "no internal address" in text
    result = haproxy_check(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_another_path_prefix(cert):
    ring = {"epoch": 1, "members": [member("x", 8700, url="wss://edge.example.com/rc/edge-a-0")]}
    assert "backend w_" not in haproxy_config(ring, options(cert))
    text = haproxy_config(ring, options(cert, path_prefix="/rc/"))
    assert "    use_backend w_edge-a-0 if { path /rc/edge-a-0 }" in text


def test_two_members_with_one_path_are_refused():
    ring = {"epoch": 1, "members": [member("same", 8700), member("same", 8701)]}
    with pytest.raises(ProxyConfigError, match="both have the path '/w/same'"):
        routes(ring, "/w/")


@pytest.mark.parametrize("overrides, message", [
    ({"bind": "127.0.0.1"}, "is not ADDRESS:PORT"),
    ({"bind": "127.0.0.1:8443 ssl crt /etc/passwd"}, "is not ADDRESS:PORT"),
    ({"cert_path": "/tmp/my cert.pem"}, "certificate path"),
    ({"cert_path": "/tmp/x.pem # y"}, "certificate path"),
    ({"cert_path": ""}, "certificate path"),
    ({"path_prefix": "w/"}, "path prefix"),
    ({"path_prefix": "/w"}, "path prefix"),
    ({"route_backends": ("router:port",)}, "route backend"),
    ({"route_backends": ("10.0.0.1:99999",)}, "route backend"),
])
def test_bad_options_are_refused(overrides, message):
    base = {"cert_path": "/etc/ringcast/proxy.pem", "bind": ":443"}
    with pytest.raises(ProxyConfigError, match=message):
        haproxy_config(RING, HaproxyOptions(**{**base, **overrides}))


def test_the_text_depends_only_on_what_routing_needs(cert):
    first = haproxy_config(RING, options(cert))
    reordered = {"epoch": 99, "members": [member("edge-a-0", 8700, weight=5), member("edge-a-1", 8701)]}
    assert haproxy_config(reordered, options(cert)) == first
    moved = {"epoch": 100, "members": [member("edge-a-0", 8700), member("edge-a-1", 8709)]}
    assert haproxy_config(moved, options(cert)) != first


def test_an_empty_ring_makes_a_valid_configuration_routing_nowhere(cert, tmp_path):
    text = haproxy_config({"epoch": 0, "members": []}, options(cert))
    assert "backend w_" not in text
    result = haproxy_check(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the command --------------------------------------------------------------------------------


@contextlib.contextmanager
def stub_operator_api(ring_holder: dict):
    """A tiny HTTP server on loopback answering GET /v1/ring with ring_holder["ring"]."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps(ring_holder["ring"]).encode()
            self.send_response(200 if self.path == "/v1/ring" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_command_writes_atomically_and_its_exit_code_says_whether_it_changed(cert, tmp_path, capsys):
    holder = {"ring": RING}
    out = tmp_path / "haproxy.cfg"
    with stub_operator_api(holder) as url:
        argv = ["--url", url, "proxy-config", "haproxy", "--cert", str(cert.pem_with_key),
                "--bind", "127.0.0.1:8443", "--output", str(out)]
        assert ctl.main(argv) == ctl.EXIT_OK
        first = out.read_text()
        assert first == haproxy_config(RING, options(cert))
        inode = out.stat().st_ino
        assert ctl.main(argv) == ctl.EXIT_UNCHANGED
        assert out.stat().st_ino == inode  # not rewritten
        holder["ring"] = {"epoch": 8, "members": RING["members"] + [member("edge-b-0", 8800)]}
        assert ctl.main(argv) == ctl.EXIT_OK
        assert out.stat().st_ino != inode  # replaced by rename, never written in place
        assert "use_backend w_edge-b-0" in out.read_text()
        assert sorted(os.listdir(tmp_path)) == ["haproxy.cfg"]  # no temporary file left behind
        assert oct(out.stat().st_mode & 0o777) == "0o644"
        checked = subprocess.run(["haproxy", "-c", "-f", str(out)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # printed, without --output
        capsys.readouterr()
        assert ctl.main(argv[:-2]) == ctl.EXIT_OK
        assert capsys.readouterr().out == out.read_text()


def test_the_command_refuses_an_empty_ring_unless_asked_and_reports_bad_rings(cert, tmp_path, capsys):
    holder = {"ring": {"epoch": 3, "members": []}}
    out = tmp_path / "haproxy.cfg"
    with stub_operator_api(holder) as url:
        argv = ["--url", url, "proxy-config", "haproxy", "--cert", str(cert.pem_with_key), "--output", str(out)]
        assert ctl.main(argv) == ctl.EXIT_FAILED
        assert "no ring member can be routed (ring epoch 3): the ring is empty" in capsys.readouterr().err
        assert not out.exists()
        holder["ring"] = {"epoch": 4, "members": [member("x", 8700, url="ws://10.0.0.5:8700/ws"), "junk"]}
        assert ctl.main(argv) == ctl.EXIT_FAILED
        err = capsys.readouterr().err
        assert "does not start with '/w/'" in err and "not a ring member object" in err
        assert not out.exists()
        holder["ring"] = ["not", "a", "ring"]
        assert ctl.main(argv) == ctl.EXIT_FAILED
        assert "did not answer a ring" in capsys.readouterr().err
        holder["ring"] = {"epoch": 3, "members": []}
        assert ctl.main(argv + ["--allow-empty"]) == ctl.EXIT_OK
        assert "backend w_" not in out.read_text()
        holder["ring"] = {"epoch": 4, "members": [member("same", 8700), member("same", 8701)]}
        assert ctl.main(argv) == ctl.EXIT_FAILED
        assert "both have the path" in capsys.readouterr().err
        assert ctl.main(argv[:4] + ["--output", str(out)]) == ctl.EXIT_USAGE  # --cert is required


def test_the_command_fails_cleanly_when_the_control_plane_is_unreachable(cert, tmp_path, capsys):
    from chaos.cluster import free_port
    argv = ["--url", f"http://127.0.0.1:{free_port()}", "--timeout-s", "2", "proxy-config", "haproxy",
            "--cert", str(cert.pem_with_key), "--output", str(tmp_path / "x.cfg")]
    assert ctl.main(argv) == ctl.EXIT_FAILED
    assert "cannot reach the control plane" in capsys.readouterr().err
