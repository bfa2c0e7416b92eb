"""Unit tests of common/settings.py: the sources of a setting and their order, conversion, help.

Flags > `RINGCAST_<SECTION>_<FIELD>` > `RINGCAST_<FIELD>` (shared settings only,
or a field's declared alias) > the TOML file (the own `[section]`, then the top
level for shared settings) > the default. Every test passes an explicit
environment mapping and writes its own TOML file; the three real settings
classes serve as examples, so one file and one environment are shown to serve
a host that runs all three services.
"""

from __future__ import annotations

import dataclasses

import pytest

from common import settings
from control.config import ControlConfig
from node.config import NodeConfig
from router.config import RouterConfig

SERVICES = {"node": NodeConfig, "router": RouterConfig, "control": ControlConfig}
# The router refuses to start with neither --redis nor --nodes: tests that give it no Redis give it a static ring.
STATIC_RING = ["--nodes", "127.0.0.1:8700"]


def load(argv, environ=None, section="node"):
    return settings.load(SERVICES[section], argv, prog="t", description="t", section=section, environ=environ or {})


def load_any(section, environ=None, argv=()):
    extra = STATIC_RING if section == "router" else []
    return load([*extra, *argv], environ, section)


def warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def write(tmp_path, text: str) -> str:
    path = tmp_path / "ringcast.toml"
    path.write_text(text)
    return str(path)


def test_precedence_flag_over_env_over_toml_over_default(tmp_path):
    path = write(tmp_path, '[node]\nmax_frame_bytes = 1000\nport = 9100\nheartbeat_interval_s = 7.5\nmax_connections = 11\n')
    env = {"RINGCAST_NODE_MAX_FRAME_BYTES": "2000", "RINGCAST_NODE_MAX_CONNECTIONS": "22"}
    config = load(["--config", path, "--max-connections", "33"], env)
    assert config.max_connections == 33  # flag
    assert config.max_frame_bytes == 2000  # env over file
    assert config.port == 9100 and config.heartbeat_interval_s == 7.5  # file
    assert config.max_rooms_per_connection == NodeConfig().max_rooms_per_connection  # default
    assert load([], {"RINGCAST_CONFIG": path}).port == 9100  # the file named by the environment


def test_a_shared_setting_comes_from_each_source_in_order(tmp_path):
    """flag > RINGCAST_NODE_REDIS > RINGCAST_REDIS > [node] > top level > default, removing one at a time."""
    path = write(tmp_path, 'redis = "redis://top:6379/0"\n[node]\nredis = "redis://section:6379/0"\n')
    env = {"RINGCAST_NODE_REDIS": "redis://prefixed:6379/0", "RINGCAST_REDIS": "redis://unprefixed:6379/0"}
    assert load(["--config", path, "--redis", "redis://flag:6379/0"], env).redis == "redis://flag:6379/0"
    assert load(["--config", path], env).redis == "redis://prefixed:6379/0"
    del env["RINGCAST_NODE_REDIS"]
    assert load(["--config", path], env).redis == "redis://unprefixed:6379/0"
    assert load(["--config", path]).redis == "redis://section:6379/0"
    assert load(["--config", write(tmp_path, 'redis = "redis://top:6379/0"\n')]).redis == "redis://top:6379/0"
    assert load([]).redis == NodeConfig().redis


@pytest.mark.parametrize("section", SERVICES)
def test_an_unprefixed_variable_of_a_setting_that_is_not_shared_moves_no_service_and_says_so(section, capsys):
    config = load_any(section, {"RINGCAST_PORT": "9999"})
    assert config.port == SERVICES[section]().port
    assert warnings(capsys) == [
        f"t: warning: RINGCAST_PORT is not applied: port is not shared by every service; "
        f"set RINGCAST_{section.upper()}_PORT instead"
    ]


def test_a_prefixed_variable_moves_only_its_own_service(capsys):
    environ = {"RINGCAST_NODE_PORT": "9100", "RINGCAST_ROUTER_PORT": "9200"}
    assert load_any("node", environ).port == 9100
    assert load_any("router", environ).port == 9200
    assert load_any("control", environ).port == ControlConfig().port
    assert load_any("node", {"RINGCAST_NODE_PORT": "9100"}).port == 9100
    assert load_any("router", {"RINGCAST_NODE_PORT": "9100"}).port == RouterConfig().port
    assert warnings(capsys) == []


def test_a_shared_variable_reaches_every_service_and_a_prefixed_one_beats_it(capsys):
    shared = "redis://10.0.0.5:6379/0"
    for section in SERVICES:
        assert load_any(section, {"RINGCAST_REDIS": shared}).redis == shared
    environ = {"RINGCAST_REDIS": shared, "RINGCAST_ROUTER_REDIS": "redis://10.0.0.9:6379/0"}
    assert load_any("router", environ).redis == "redis://10.0.0.9:6379/0"
    assert load_any("control", environ).redis == shared
    assert load_any("node", {"RINGCAST_LOG_LEVEL": "debug", "RINGCAST_NODE_LOG_LEVEL": "error"}).log_level == "error"
    assert warnings(capsys) == []


def test_a_declared_alias_is_read_after_the_prefixed_name_without_a_warning(tmp_path, capsys):
    # RINGCAST_ADMIN_TOKEN is what `ringcast ctl` reads too: the control plane keeps reading it.
    assert load_any("control", {"RINGCAST_ADMIN_TOKEN": "a"}).token == "a"
    both = {"RINGCAST_ADMIN_TOKEN": "a", "RINGCAST_CONTROL_ADMIN_TOKEN": ""}
    assert load_any("control", both).token == ""  # an explicit empty one refuses every mutation
    path = write(tmp_path, '[control]\nadmin_token = "from-file"\n')
    assert load_any("control", {"RINGCAST_ADMIN_TOKEN": "a"}, ["--config", path]).token == "a"
    assert warnings(capsys) == []


HOST_FILE = """\
redis = "redis://10.0.0.5:6379/0"
key_prefix = "fleet:"
channel_prefix = "fleet:room:"

[node]
port = 9100
workers = 3
max_frame_bytes = 1000

[router]
port = 9200
nodes = ["127.0.0.1:9100"]

[control]
port = 9300
replica_id = "control-a"
redis = "redis://10.0.0.6:6379/0"
"""


def test_one_file_serves_every_service_of_a_host_each_with_its_own_values(tmp_path, capsys):
    path = write(tmp_path, HOST_FILE)
    node = load_any("node", argv=["--config", path])
    assert (node.port, node.workers, node.max_frame_bytes) == (9100, 3, 1000)
    assert (node.redis, node.key_prefix, node.channel_prefix) == ("redis://10.0.0.5:6379/0", "fleet:", "fleet:room:")
    assert warnings(capsys) == []
    router = load(["--config", path], section="router")
    assert (router.port, router.redis, router.key_prefix, router.nodes) == (
        9200, "redis://10.0.0.5:6379/0", "fleet:", ["127.0.0.1:9100"])
    control = load(["--config", path], section="control")
    assert (control.port, control.replica_id, control.key_prefix) == (9300, "control-a", "fleet:")
    assert control.redis == "redis://10.0.0.6:6379/0"  # its section beats the top level
    # channel_prefix is the node's: the router and the control plane say they ignore it, once each.
    assert [line.split(": warning: ")[1].split(" at ")[0] for line in warnings(capsys)] == ["channel_prefix"] * 2


def test_an_unknown_key_in_the_own_section_is_an_error_and_other_sections_are_not_read(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        load(["--config", write(tmp_path, "[node]\nmax_frame_byte = 1\n")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) under [node]" in err and "max_frame_byte" in err
    # Another service's section, typos and all, is none of the node's business.
    path = write(tmp_path, '[router]\nport = "not a port"\nmax_frame_byte = 1\n[elsewhere]\nx = 1\n')
    assert load(["--config", path]).port == NodeConfig().port
    assert warnings(capsys) == []


def test_a_top_level_setting_that_is_not_shared_is_an_error_naming_the_section(tmp_path, capsys):
    path = write(tmp_path, "port = 9100\n")
    for section in SERVICES:
        with pytest.raises(SystemExit) as info:
            load_any(section, argv=["--config", path])
        assert info.value.code == 2
        assert f"move it under [{section}]" in capsys.readouterr().err


def test_a_top_level_key_the_service_does_not_have_is_ignored_with_a_warning(tmp_path, capsys):
    path = write(tmp_path, 'max_events = 5\nnot_a_setting = 1\nlog_level = "debug"\n')
    assert load(["--config", path]).log_level == "debug"
    ignored = warnings(capsys)
    assert len(ignored) == 2, ignored
    assert "max_events at the top level" in ignored[0] and "not_a_setting at the top level" in ignored[1]


def test_list_and_bool_settings_from_every_source(tmp_path):
    assert load(["--nodes", "a=127.0.0.1:1", "--nodes", "127.0.0.1:2"]).nodes == ["a=127.0.0.1:1", "127.0.0.1:2"]
    assert load([], {"RINGCAST_NODE_HISTORY_RULE": "chat:*=5:5, x:*=0:0"}).history_rule == ["chat:*=5:5", "x:*=0:0"]
    assert load([], {"RINGCAST_CONTROL_AUTO_REBALANCE": "off"}, "control").auto_rebalance is False
    path = write(tmp_path, '[node]\nallowed_origins = ["https://a.example"]\n')
    assert load(["--config", path]).allowed_origins == ["https://a.example"]


@pytest.mark.parametrize(
    "argv,environ",
    [
        (["--max-frame-bytes", "lots"], {}),
        ([], {"RINGCAST_NODE_MAX_FRAME_BYTES": "1.5"}),
        ([], {"RINGCAST_NODE_HEARTBEAT_INTERVAL_S": "soon"}),
        (["--max-connections", "0"], {}),
        (["--heartbeat-timeout-s", "-1"], {}),
        ([], {"RINGCAST_NODE_BUS": "kafka"}),
        ([], {"RINGCAST_LOG_LEVEL": "loud"}),
        (["--bus", "memory", "--workers", "2"], {}),
        (["--port", "65535", "--workers", "2"], {}),
    ],
)
def test_bad_values_exit_2_with_a_message(argv, environ, capsys):
    with pytest.raises(SystemExit) as info:
        load(argv, environ)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bad_toml_values_and_unknown_keys_are_refused(tmp_path, capsys):
    for text, word in (("[node]\nmax_frame_bytes = 1.5\n", "max_frame_bytes"), ("[node]\nheartbeat = 1\n", "heartbeat"),
                       ("node = 1\n", "must be a table"),
                       ("not toml =", "cannot read")):
        with pytest.raises(SystemExit):
            load(["--config", write(tmp_path, text)])
        assert word in capsys.readouterr().err, text
    with pytest.raises(SystemExit):
        load(["--config", str(tmp_path / "missing.toml")])


@pytest.mark.parametrize("section", SERVICES)
def test_help_shows_every_setting_with_its_default_and_its_variables(section, capsys):
    with pytest.raises(SystemExit):
        load(["--help"], section=section)
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(SERVICES[section]):
        names = settings.env_names(field, section)
        assert settings.flag_name(field.name) in text, field.name
        assert f"env {' or '.join(names)})" in text, field.name
        assert names[0] == f"RINGCAST_{section.upper()}_{field.name.upper()}"
        assert (f"RINGCAST_{field.name.upper()}" in names) is (field.metadata["shared"] or field.name == "admin_token")
    assert f"env RINGCAST_{section.upper()}_REDIS or RINGCAST_REDIS)" in text
    assert f"under [{section}]" in text
    if section == "control":
        assert "env RINGCAST_CONTROL_ADMIN_TOKEN or RINGCAST_ADMIN_TOKEN)" in text
    if section == "node":
        assert "(default: 65536;" in text
