"""Unit tests of common/settings.py: flags > environment > TOML > default, conversion, help.

The edge node's NodeConfig serves as the example settings class (its
validation errors leave through the same exit-2 path as conversion errors).
"""

from __future__ import annotations

import dataclasses

import pytest

from common import settings
from node.config import NodeConfig


def load(argv, environ=None):
    return settings.load(NodeConfig, argv, prog="t", description="t", section="node", environ=environ or {})


def test_precedence_flag_over_env_over_toml_over_default(tmp_path):
    path = tmp_path / "ringcast.toml"
    path.write_text('max_frame_bytes = 1000\nport = 9100\n[node]\nheartbeat_interval_s = 7.5\nmax_connections = 11\n')
    env = {"RINGCAST_MAX_FRAME_BYTES": "2000", "RINGCAST_MAX_CONNECTIONS": "22"}
    config = load(["--config", str(path), "--max-connections", "33"], env)
    assert config.max_connections == 33  # flag
    assert config.max_frame_bytes == 2000  # env over file
    assert config.port == 9100 and config.heartbeat_interval_s == 7.5  # file (top level and [node])
    assert config.max_rooms_per_connection == NodeConfig().max_rooms_per_connection  # default
    assert load([], {"RINGCAST_CONFIG": str(path)}).port == 9100  # the file named by the environment


def test_list_and_bool_settings_from_every_source(tmp_path):
    assert load(["--nodes", "a=127.0.0.1:1", "--nodes", "127.0.0.1:2"]).nodes == ["a=127.0.0.1:1", "127.0.0.1:2"]
    assert load([], {"RINGCAST_HISTORY_RULE": "chat:*=5:5, x:*=0:0"}).history_rule == ["chat:*=5:5", "x:*=0:0"]
    path = tmp_path / "c.toml"
    path.write_text('allowed_origins = ["https://a.example"]\n')
    assert load(["--config", str(path)]).allowed_origins == ["https://a.example"]


@pytest.mark.parametrize(
    "argv,environ",
    [
        (["--max-frame-bytes", "lots"], {}),
        ([], {"RINGCAST_MAX_FRAME_BYTES": "1.5"}),
        ([], {"RINGCAST_HEARTBEAT_INTERVAL_S": "soon"}),
        (["--max-connections", "0"], {}),
        (["--heartbeat-timeout-s", "-1"], {}),
        ([], {"RINGCAST_BUS": "kafka"}),
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
    for text, word in (("max_frame_bytes = 1.5\n", "max_frame_bytes"), ("max_frame_byte = 1\n", "unknown"),
                       ("[node]\nheartbeat = 1\n", "heartbeat"), ("not toml =", "cannot read")):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(SystemExit):
            load(["--config", str(path)])
        assert word in capsys.readouterr().err, text
    with pytest.raises(SystemExit):
        load(["--config", str(tmp_path / "missing.toml")])


def test_help_documents_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit):
        load(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(NodeConfig):
        assert settings.flag_name(field.name) in text, field.name
        assert settings.env_name(field.name) in text, field.name
    assert "(default: 65536;" in text
