"""common/redis_connect.py without a server: URL forms, redaction, secrets and startup errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from common.redis_connect import RedisTarget, parse_url, redact_url
from common.settings import SettingsError


def settings(url: str, **overrides) -> SimpleNamespace:
    values = dict(redis=url, redis_password="", redis_password_file="", redis_sentinel_password_file="",
                  redis_tls_ca_file="", redis_tls_cert_file="", redis_tls_key_file="", redis_tls_check_hostname=True)
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    "url, hosts, db, service, tls, username, password",
    [
        ("redis://127.0.0.1:6390/2", (("127.0.0.1", 6390),), 2, "", False, None, None),
        ("redis://localhost", (("localhost", 6379),), 0, "", False, None, None),
        ("rediss://:s%40cret@redis.example:6380/0", (("redis.example", 6380),), 0, "", True, None, "s@cret"),
        ("redis://user:pw@[::1]:7000/1", (("::1", 7000),), 1, "", False, "user", "pw"),
        ("redis+sentinel://h1:26379,h2:26380,h3/mymaster/0",
         (("h1", 26379), ("h2", 26380), ("h3", 26379)), 0, "mymaster", False, None, None),
        ("rediss+sentinel://:pw@h1,h2/cache", (("h1", 26379), ("h2", 26379)), 0, "cache", True, None, "pw"),
        ("redis+cluster://h1:7000,h2:7001,h3", (("h1", 7000), ("h2", 7001), ("h3", 6379)), 0, "", False, None, None),
        ("rediss+cluster://:pw@h1:7000/0", (("h1", 7000),), 0, "", True, None, "pw"),
    ],
)
def test_url_forms(url, hosts, db, service, tls, username, password):
    target = parse_url(url)
    assert (target.hosts, target.db, target.service, target.tls is not None, target.username, target.password) == (
        hosts, db, service, tls, username, password)


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:6379", "unsupported Redis URL"),
        ("127.0.0.1:6379", "unsupported Redis URL"),
        ("redis+sentinel://h1:26379,h2:26379", "name the Sentinel master"),
        ("redis+sentinel:///mymaster", "at least one sentinel"),
        ("redis+sentinel://h1:99999/mymaster", "bad port"),
        ("redis+sentinel://h1:26379,,h2/mymaster", "empty host"),
        ("redis://h1:6379,h2:6379/0", "several hosts need redis\\+sentinel"),
        ("redis://h1:6379/zero", "database must be a number"),
        ("redis+sentinel://h1/mymaster/0/extra", "too many path segments"),
        ("rediss://h1:6379/0?ssl_cert_reqs=none", "query options are not read"),
        ("redis+cluster://h1:7000,h2:7001/1", "only database 0"),
        ("redis+cluster://h1:7000,,h2:7001", "empty host"),
    ],
)
def test_malformed_urls_are_refused_with_what_is_wrong(url, says):
    with pytest.raises(SettingsError, match=says):
        parse_url(url)


def test_only_cluster_urls_are_cluster_targets():
    assert parse_url("redis+cluster://h1:7000").cluster and parse_url("rediss+cluster://h1:7000").cluster
    assert not any(parse_url(url).cluster for url in ("redis://h1", "rediss://h1", "redis+sentinel://h1/m"))


def test_the_node_pairs_bus_redis_cluster_with_a_cluster_url_only(capsys):
    from common import settings as loader
    from node.config import NodeConfig

    for args in (["--bus", "redis-cluster", "--redis", "redis://h1:7000/0"],
                 ["--bus", "redis", "--redis", "redis+cluster://h1:7000"]):
        with pytest.raises(SystemExit):
            loader.load(NodeConfig, args, prog="node", description="", section="node", environ={})
        assert "--bus redis-cluster goes with a redis+cluster://" in capsys.readouterr().err
    config = loader.load(NodeConfig, ["--bus", "redis-cluster", "--redis", "redis+cluster://h1:7000,h2:7001"],
                         prog="node", description="", section="node", environ={})
    assert RedisTarget.from_settings(config).hosts == (("h1", 7000), ("h2", 7001))


def test_router_and_control_take_a_cluster_url_and_tag_their_keys():
    from common import settings as loader
    from common.keys import Keys
    from control.config import ControlConfig
    from router.config import RouterConfig

    for cls, section in ((RouterConfig, "router"), (ControlConfig, "control")):
        config = loader.load(cls, ["--redis", "redis+cluster://h1:7000"], prog=section, description="",
                             section=section, environ={})
        assert RedisTarget.from_settings(config).cluster
    tagged, plain = Keys(cluster=True), Keys()
    assert (tagged.ring, tagged.command("w1"), tagged.rooms("w1")) == (
        "ringcast:{ctl}ring", "ringcast:{ctl}node:w1:command", "ringcast:{ctl}node:w1:rooms")
    assert (plain.ring, plain.command("w1")) == ("ringcast:ring", "ringcast:node:w1:command")  # unchanged


def test_the_node_refuses_presence_on_a_cluster_bus(capsys):
    from common import settings as loader
    from node.config import NodeConfig

    for flag in ("--presence-rule", "--presence-events-rule"):
        with pytest.raises(SystemExit):
            loader.load(NodeConfig, ["--bus", "redis-cluster", "--redis", "redis+cluster://h1:7000", flag, "chat:*"],
                        prog="node", description="", section="node", environ={})
        assert "presence (--presence-rule, --presence-events-rule) is not available with --bus redis-cluster" in \
            capsys.readouterr().err
        loader.load(NodeConfig, ["--redis", "redis://h1:6379/0", flag, "chat:*"], prog="node", description="",
                    section="node", environ={})


def test_a_prefix_with_braces_is_refused_on_a_cluster_only(capsys):
    """Redis hashes a key's first {...}: braces in a prefix would take the place of each name's tag."""
    from common import settings as loader
    from control.config import ControlConfig
    from node.config import NodeConfig
    from router.config import RouterConfig

    def load(cls, section: str, url: str, *args: str):
        bus = ["--bus", "redis-cluster" if "+cluster" in url else "redis"] if cls is NodeConfig else []
        return loader.load(cls, ["--redis", url, *bus, *args], prog=section, description="", section=section, environ={})

    cases = [(cls, section, "--key-prefix") for cls, section in
             ((NodeConfig, "node"), (RouterConfig, "router"), (ControlConfig, "control"))]
    cases.append((NodeConfig, "node", "--channel-prefix"))
    for cls, section, flag in cases:
        for prefix in ("app{}:", "app{x}:", "app{:", "app}:"):
            with pytest.raises(SystemExit):
                load(cls, section, "redis+cluster://h1:7000", flag, prefix)
            says = capsys.readouterr().err
            assert f"{flag[2:].replace('-', '_')} must not contain '{{' or '}}' with a Redis Cluster" in says, (cls, flag, says)
            assert repr(prefix) in says
            load(cls, section, "redis://h1:6379/0", flag, prefix)  # untagged names: any prefix
        load(cls, section, "redis+cluster://h1:7000", flag, "app:")


def test_a_refused_url_never_shows_its_password():
    with pytest.raises(SettingsError) as caught:
        parse_url("redis://user:hunter2@h1:6379,h2:6379/0")
    assert "hunter2" not in str(caught.value)
    assert "user:***@" in str(caught.value)


@pytest.mark.parametrize(
    "url, redacted",
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://alice:p%40ss@h:6380/1", "rediss://alice:***@h:6380/1"),
        ("redis+sentinel://:pw@h1:26379,h2:26379/mymaster/0", "redis+sentinel://:***@h1:26379,h2:26379/mymaster/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("bus on redis://:a@b@c:1/0 down", "bus on redis://:***@c:1/0 down"),
    ],
)
def test_redaction(url, redacted):
    assert redact_url(url) == redacted
    target_text = str(parse_url(url)) if url.startswith("redis") else None
    if target_text is not None:
        assert target_text == redacted


def test_password_file_wins_over_the_environment_setting_and_the_url(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\nsecond line ignored\n")
    assert RedisTarget.from_settings(settings("redis://:in-url@h/0")).password == "in-url"
    assert RedisTarget.from_settings(settings("redis://:in-url@h/0", redis_password="from-env")).password == "from-env"
    target = RedisTarget.from_settings(settings("redis://:in-url@h/0", redis_password="from-env",
                                                redis_password_file=str(secret)))
    assert target.password == "from-file"
    assert "from-file" not in repr(target) and "in-url" not in str(target)


def test_unreadable_or_empty_files_are_startup_errors(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(SettingsError, match="redis_password_file: cannot read"):
        RedisTarget.from_settings(settings("redis://h/0", redis_password_file=missing))
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(SettingsError, match="is empty"):
        RedisTarget.from_settings(settings("redis://h/0", redis_password_file=str(empty)))
    with pytest.raises(SettingsError, match="redis_tls_ca_file: cannot read"):
        RedisTarget.from_settings(settings("rediss://h/0", redis_tls_ca_file=missing))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(SettingsError, match="Redis TLS files"):
        RedisTarget.from_settings(settings("rediss://h/0", redis_tls_ca_file=str(not_pem)))
    with pytest.raises(SettingsError, match="is not a redis\\+sentinel"):
        RedisTarget.from_settings(settings("redis://h/0", redis_sentinel_password_file=str(not_pem)))


def test_tls_options_on_a_plain_url_are_refused(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(SettingsError, match="redis_tls_ca_file set but the Redis URL .* is plain TCP"):
        RedisTarget.from_settings(settings("redis://h/0", redis_tls_ca_file=str(ca)))
    with pytest.raises(SettingsError, match="redis_tls_check_hostname"):
        RedisTarget.from_settings(settings("redis+sentinel://h/m", redis_tls_check_hostname=False))


def test_service_configs_refuse_a_bad_redis_setting_at_startup(tmp_path, capsys):
    from common import settings as loader
    from control.config import ControlConfig
    from node.config import NodeConfig
    from router.config import RouterConfig

    for cls, section in ((NodeConfig, "node"), (RouterConfig, "router"), (ControlConfig, "control")):
        with pytest.raises(SystemExit):
            loader.load(cls, ["--redis", "redis+sentinel://h1:26379"], prog=section, description="", section=section,
                        environ={})
        assert "name the Sentinel master" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            loader.load(cls, ["--redis", "redis://h/0", "--redis-password-file", str(tmp_path / "nope")],
                        prog=section, description="", section=section, environ={})
        assert "redis_password_file: cannot read" in capsys.readouterr().err


def test_the_password_setting_is_never_a_flag():
    from common import settings as loader
    from node.config import NodeConfig

    with pytest.raises(SystemExit):
        loader.load(NodeConfig, ["--redis-password", "x"], prog="node", description="", section="node", environ={})
    config = loader.load(NodeConfig, [], prog="node", description="", section="node",
                         environ={"RINGCAST_REDIS_PASSWORD": "from-env"})
    assert RedisTarget.from_settings(config).password == "from-env"
