"""deploy/systemd: every unit passes `systemd-analyze verify`, and the example settings
(`ringcast.toml` with the variables of `ringcast.env`) load for node, router and control
the way each service loads them, with the timeouts and limits the units rely on.

`systemd-analyze verify` runs on a copy of each unit (the three services, and the timer
and service that regenerate HAProxy's configuration), changed only where verify needs it:

- `/opt/ringcast/.venv/bin/ringcast` becomes this checkout's `.venv/bin/ringcast`: verify
  fails a unit whose program does not exist ("Command ... is not executable"). (The
  HAProxy one's program is /bin/sh; the path inside its script is replaced too, unchecked.)
- `EnvironmentFile=` and `--config` point at copies of the examples in a temporary
  directory, so the copy names nothing under /etc (verify does not read either);
- `User=ringcast` is kept: verify does not look users up (systemd 252 passes a unit with
  `User=nosuchuser`), so the user need not exist on the test machine.

verify exits 0 on warnings such as an unknown key ("Unknown key 'X' in section [Service],
ignoring"), so the test reads its output: any line naming our unit fails, a line about
another unit file of the system (a dependency verify loaded) is ignored, and any other
line fails too, so an unexpected message is read by a person rather than filtered away.
`test_verify_reports_a_broken_unit` checks on a broken copy that this reading catches errors.

Without systemd-analyze the verify tests skip (the issue asks for verify "if available");
the settings tests need nothing but the checkout.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
UNITS_DIR = REPO / "deploy" / "systemd"
EXAMPLE_TOML = UNITS_DIR / "ringcast.toml"
EXAMPLE_ENV = UNITS_DIR / "ringcast.env"
CHECKOUT_RINGCAST = REPO / ".venv" / "bin" / "ringcast"

# service -> its unit file
UNITS = {
    "node": UNITS_DIR / "ringcast-node.service",
    "router": UNITS_DIR / "ringcast-router.service",
    "control": UNITS_DIR / "ringcast-control.service",
}
# every unit shipped: the three services, and the timer (and its service) regenerating HAProxy's configuration
ALL_UNITS = sorted(p for p in UNITS_DIR.iterdir() if p.suffix in (".service", ".timer"))
SHIPPED_PROGRAM = "/opt/ringcast/.venv/bin/ringcast"
SHIPPED_CONFIG = "/etc/ringcast/ringcast.toml"
SHIPPED_ENV = "/etc/ringcast/ringcast.env"

# A line of verify's output about a unit file of the system rather than ours: it starts with the
# path of that file (messages about a unit's own file are printed as "PATH:LINE: message").
SYSTEM_UNIT_LINE = re.compile(r"^/(usr/lib|lib|etc|run)/systemd/system/[^\s:]+(:\d+)?: ")

# Valid stand-ins for the example's CHANGE-ME placeholders, so the settings can load.
TEST_SECRETS = {
    "RINGCAST_REDIS": "redis://:test-password@10.0.0.13:6379/0",
    "RINGCAST_JWT_SECRETS": "k1=" + "s" * 32,
    "RINGCAST_ADMIN_TOKEN": "test-admin-token",
}


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not found (Debian package `systemd`): the units cannot be verified here")
    return path


def unit_sections(path: Path) -> configparser.ConfigParser:
    # strict=False: systemd allows a key to repeat (none of ours does, but verify is the judge of syntax).
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(path.read_text())
    return parser


def seconds(value: str) -> float:
    """A systemd time span of the forms the units use: `30`, `30s`, `2min`."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value.strip())
    assert match, f"unexpected time span {value!r}"
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * 60 if unit == "min" else number


def verifiable_copies(directory: Path) -> dict[str, Path]:
    """Copies of every unit of deploy/systemd that verify can judge on this machine (see the module
    docstring), by file name, side by side (a timer is verified with its service next to it)."""
    config = directory / "ringcast.toml"
    env = directory / "ringcast.env"
    shutil.copy(EXAMPLE_TOML, config)
    shutil.copy(EXAMPLE_ENV, env)
    for service, path in UNITS.items():
        lines = path.read_text().splitlines()
        exec_start = f"ExecStart={SHIPPED_PROGRAM} {service} --config {SHIPPED_CONFIG}"
        assert exec_start in lines, f"{path.name}: expected the line {exec_start!r}"
        assert f"EnvironmentFile={SHIPPED_ENV}" in lines, f"{path.name}: expected EnvironmentFile={SHIPPED_ENV}"
    copies = {}
    for path in ALL_UNITS:
        text = path.read_text()
        text = text.replace(SHIPPED_PROGRAM, str(CHECKOUT_RINGCAST))
        text = text.replace(SHIPPED_CONFIG, str(config)).replace(SHIPPED_ENV, str(env))
        copies[path.name] = directory / path.name  # verify names the unit after its file
        copies[path.name].write_text(text)
    return copies


def verify_problems(unit: Path) -> list[str]:
    """What `systemd-analyze verify` says about `unit`, less the lines about other units of the system."""
    assert CHECKOUT_RINGCAST.exists(), f"{CHECKOUT_RINGCAST} is missing: run scripts/bootstrap.sh"
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, cwd=unit.parent,
    )
    problems = []
    for line in (result.stdout + result.stderr).splitlines():
        if not line.strip():
            continue
        if SYSTEM_UNIT_LINE.match(line) and unit.name not in line:
            continue  # a dependency's own unit file (e.g. /lib/systemd/system/foo.service:12: ...)
        problems.append(line)
    if result.returncode != 0 and not problems:
        problems.append(f"systemd-analyze verify exited {result.returncode} without a message")
    return problems


@pytest.mark.parametrize("unit", [p.name for p in ALL_UNITS])
def test_systemd_analyze_verify_passes(unit, tmp_path):
    assert verify_problems(verifiable_copies(tmp_path)[unit]) == []


def test_every_service_has_its_unit():
    assert set(UNITS.values()) <= set(ALL_UNITS)
    assert {p.name for p in ALL_UNITS} >= {"ringcast-haproxy-config.service", "ringcast-haproxy-config.timer"}


def test_verify_reports_a_broken_unit(tmp_path):
    # The reading of verify's output must catch both kinds of mistake: a warning verify exits 0 on
    # (an unknown key) and an error (a program that does not exist).
    systemd_analyze()
    copy = verifiable_copies(tmp_path)["ringcast-node.service"]
    copy.write_text(copy.read_text().replace("[Service]\n", "[Service]\nRestartSecs=2s\n", 1))
    assert any("RestartSecs" in line for line in verify_problems(copy))
    copy.write_text(copy.read_text().replace(str(CHECKOUT_RINGCAST), str(tmp_path / "no-such-ringcast")))
    assert any("no-such-ringcast" in line for line in verify_problems(copy))


# --- the example settings, loaded the way each service loads them --------------------------------


def example_environment() -> dict[str, str]:
    """The variables of the example ringcast.env (KEY=VALUE lines, as systemd reads them)."""
    variables = {}
    for number, line in enumerate(EXAMPLE_ENV.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"RINGCAST_[A-Z0-9_]+", key), f"{EXAMPLE_ENV.name}:{number}: not KEY=VALUE: {line!r}"
        variables[key] = value
    return variables


def load_service(service: str, environ: dict[str, str], monkeypatch, config: Path = EXAMPLE_TOML):
    """The settings object `ringcast <service> --config <config>` would run with, in `environ`.

    It calls the service's own `main` (node.cli, router.cli, control.cli: the code that reads
    flags, environment and file, including names like RINGCAST_JWT_SECRETS) with the part that
    would start serving replaced by a stand-in that records the settings.
    """
    for name in [n for n in os.environ if n.startswith("RINGCAST_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen = []

    class Started:
        def __init__(self, config):
            seen.append(config)

        async def run(self):
            return 0

    if service == "node":
        import node.cli as cli
        monkeypatch.setattr(cli, "Supervisor", Started)
    elif service == "router":
        import router.cli as cli
        monkeypatch.setattr(cli, "RouteService", Started)
    else:
        import control.cli as cli
        monkeypatch.setattr(cli, "ControlService", Started)
    monkeypatch.setattr(cli, "setup_logging", lambda *args, **kwargs: None)
    assert cli.main(["--config", str(config)]) in (0, None)
    assert len(seen) == 1
    return seen[0]


def test_the_example_env_file_names_only_the_documented_secrets():
    assert set(example_environment()) == set(TEST_SECRETS)


@pytest.mark.parametrize("service", sorted(UNITS))
def test_the_example_settings_load_for_every_service_without_warnings(service, monkeypatch, capsys):
    config = load_service(service, TEST_SECRETS, monkeypatch)
    assert "warning" not in capsys.readouterr().err
    # Shared keys from the top level and the shared RINGCAST_REDIS reach every service.
    assert config.redis == TEST_SECRETS["RINGCAST_REDIS"]
    assert config.key_prefix == "ringcast:"
    assert config.log_level == "info"
    if service == "node":
        assert config.node_id == "edge-a"
        assert config.auth_enabled and set(config.token_keys()) == {"k1"}
        assert config.trusted_proxies == ["10.0.0.11/32", "10.0.0.12/32"]
        assert config.url == "wss://rt.example.com/w/edge-a-0"
        assert config.host == "10.0.0.11"
    elif service == "router":
        assert (config.host, config.port) == ("10.0.0.11", 8800)
    else:
        assert (config.host, config.port, config.replica_id) == ("10.0.0.11", 8600, "edge-a")
        assert config.token == TEST_SECRETS["RINGCAST_ADMIN_TOKEN"]


def test_the_node_refuses_to_start_with_the_placeholder_key(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_service("node", example_environment(), monkeypatch)
    assert exit_info.value.code == 2
    assert "jwt_secret" in capsys.readouterr().err


def test_the_units_stop_after_the_node_and_hold_its_connections(monkeypatch):
    node = load_service("node", TEST_SECRETS, monkeypatch)
    service = unit_sections(UNITS["node"])["Service"]
    # The supervisor kills workers shutdown_timeout_s + 5 s after SIGTERM (node/supervisor.py);
    # systemd must not SIGKILL them first. SIGTERM to every process of the unit: workers whose
    # supervisor died still shut down gracefully (a second SIGTERM changes nothing for a worker).
    assert seconds(service["TimeoutStopSec"]) > node.shutdown_timeout_s + 5 + 5
    assert service["KillMode"] == "control-group"
    assert service["KillSignal"] == "SIGTERM"
    # One descriptor per connection per worker process, + ~100 (docs/operations.md).
    assert int(service["LimitNOFILE"]) >= node.max_connections + 100
    for path in UNITS.values():
        unit = unit_sections(path)["Service"]
        assert unit["User"] == "ringcast" and unit["Restart"] == "on-failure"
        assert unit["Type"] in ("simple", "exec")
        assert unit["EnvironmentFile"] == SHIPPED_ENV
