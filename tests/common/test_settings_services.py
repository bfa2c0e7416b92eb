"""One TOML file for a host that runs every service: real `ringcast router` and `ringcast control`.

The file carries node-only settings under `[node]`, each service's own port
under its section and the shared Redis URL and key prefix at the top level.
Both services start from it alone (nothing but `--config` on their command
line), listen on the ports of their own sections, reach the real Redis given
at the top level under the shared prefix, and each prints one warning for
the unprefixed `RINGCAST_PORT` left in their environment (which moves
neither) and one for the node's top-level `channel_prefix` (which they do
not have).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from chaos.cluster import RedisServer, _ServiceProcess, free_port, http_json
from chaos.eventually import eventually


@dataclass
class ConfiguredService(_ServiceProcess):
    """`ringcast <kind> --config PATH`: every setting from the file and the given environment."""

    kind: str
    config_path: str
    env: dict[str, str]
    proc: object = None
    log_path: str = ""
    prefix: list[str] = field(default_factory=list)  # no `ip netns exec`: loopback of this host

    def start(self) -> "ConfiguredService":
        self._launch(self.kind, [sys.executable, "-m", "ringcast_cli", self.kind, "--config", self.config_path], self.env)
        return self

    async def health(self, port: int) -> dict:
        def probe() -> dict | None:
            self._check_alive(self.kind)
            status, body = http_json(f"http://127.0.0.1:{port}/healthz")
            return body if status == 200 else None
        return await eventually(probe, what=f"ringcast {self.kind} answering on port {port}")


async def test_router_and_control_start_from_one_host_file_each_on_its_own_port(redis_server: RedisServer, tmp_path):
    router_port, control_port, env_port = free_port(), free_port(), free_port()
    path = tmp_path / "ringcast.toml"
    path.write_text(f"""\
redis = "{redis_server.url}"
key_prefix = "fleet:"
channel_prefix = "fleet:room:"

[node]
port = 9100
workers = 3
max_frame_bytes = 1000
history_size = 10

[router]
port = {router_port}

[control]
port = {control_port}
replica_id = "control-a"
""")
    # What the operator's shell holds: nothing of ringcast's but an old-style RINGCAST_PORT.
    env = {name: value for name, value in os.environ.items() if not name.startswith("RINGCAST_")}
    env["RINGCAST_PORT"] = str(env_port)
    router = ConfiguredService("router", str(path), env).start()
    control = ConfiguredService("control", str(path), env).start()
    try:
        await router.health(router_port)
        assert (await control.health(control_port))["replica"] == "control-a"
        await eventually(lambda: http_json(f"http://127.0.0.1:{control_port}/healthz")[1].get("leader"),
                         what="the replica to lead in the Redis from the file's top level")
        await eventually(lambda: b"control-a" in redis_server.command("HKEYS", "fleet:control:replicas"),
                         what="the control replica announced under the shared key prefix")
        await eventually(lambda: f"127.0.0.1:{router_port}".encode() in redis_server.command("HKEYS", "fleet:routers"),
                         what="the router announced under the shared key prefix")
        for service in (router, control):
            warnings = [line for line in service.log().splitlines() if ": warning: " in line]
            assert len(warnings) == 2, service.log()
            assert any("RINGCAST_PORT is not applied" in line and f"RINGCAST_{service.kind.upper()}_PORT" in line
                       for line in warnings), warnings
            assert any("channel_prefix at the top level" in line for line in warnings), warnings
    finally:
        router.stop()
        control.stop()
