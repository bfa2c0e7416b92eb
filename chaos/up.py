"""`ringcast up`: a whole local cluster in one command, in the foreground.

Owns starting, for a developer's machine, a redis-server on loopback (unless
--redis points at one) and the cluster's services (node workers, a route
service and a control plane replica), printing where they listen (the demo chat page included), and stopping every process it started (by PID) on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading

from chaos.cluster import ControlProcess, NodeProcess, RedisServer, RouterProcess

# The demo page joins whatever room its user types: every room gets presence and presence_diff events.
DEMO_PRESENCE_RULE = "*"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringcast up",
        description="Start a local ringcast cluster on loopback and keep it running until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8700, help="port of node worker 0 (default: 8700)")
    parser.add_argument("--workers", type=int, default=2, help="node worker processes (default: 2)")
    parser.add_argument("--redis-port", type=int, default=6379, help="port of the redis-server it starts (default: 6379)")
    parser.add_argument("--redis", default=None, help="use this Redis URL instead of starting a redis-server")
    parser.add_argument("--router-port", type=int, default=8800, help="port of the route service (default: 8800)")
    parser.add_argument("--control-port", type=int, default=8600, help="port of the control plane API (default: 8600)")
    parser.add_argument("--presence-rule", action="append", default=None, metavar="PREFIX*",
                        help="rooms with presence and presence_diff events, repeatable (default: "
                             f"{DEMO_PRESENCE_RULE!r}, every room; the demo's members panel uses them)")
    parser.add_argument("--admin-token", default=os.environ.get("RINGCAST_ADMIN_TOKEN"),
                        help="control plane admin token (env RINGCAST_ADMIN_TOKEN; default: a random one, printed)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.host.startswith("127."):
        print("ringcast up: --host must be a loopback address (127.x.x.x)", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    redis = None
    node = None
    router = None
    control = None
    try:
        redis_url = args.redis
        if redis_url is None:
            redis = RedisServer(port=args.redis_port, host=args.host).start()
            redis_url = redis.url
            print(f"redis     {redis_url} (pid {redis.proc.pid})", flush=True)
        # The static ring of these workers places rooms until a control plane publishes one.
        nodes = ",".join(f"{args.host}:{args.port + i}" for i in range(args.workers))
        presence_rules = args.presence_rule or [DEMO_PRESENCE_RULE]
        presence_args = [arg for rule in presence_rules
                         for arg in ("--presence-rule", rule, "--presence-events-rule", rule)]
        node = NodeProcess(
            port=args.port, workers=args.workers, host=args.host,
            args=["--redis", redis_url, "--nodes", nodes, *presence_args],
        ).start()
        router = RouterProcess(port=args.router_port, host=args.host, args=["--redis", redis_url, "--nodes", nodes]).start()
        print(f"router    {router.url('/route?room=general')}", flush=True)
        print(f"demo      {router.url('/demo/')}  (the chat page; open it in two tabs; members by presence in rooms "
              f"{' '.join(presence_rules)})", flush=True)
        token = args.admin_token or secrets.token_urlsafe(16)
        control = ControlProcess(port=args.control_port, host=args.host, redis_url=redis_url, admin_token=token).start()
        print(f"control   {control.url}/v1/nodes  (ringcast ctl --url {control.url} nodes)", flush=True)
        if not args.admin_token:
            print(f"admin token (for ringcast ctl --token / RINGCAST_ADMIN_TOKEN): {token}", flush=True)
        for index in range(args.workers):
            print(f"worker {index}  {node.ws_url(index)}  metrics {node.http_url(index, '/metrics')}", flush=True)
        print(f"node log  {node.log_path}", flush=True)
        print("cluster is up; Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            if node.proc is not None and node.proc.poll() is not None:
                print(f"ringcast node exited with {node.proc.returncode}; log:\n{node.log()}", file=sys.stderr)
                return 1
        return 0
    finally:
        if control is not None:
            control.stop()
        if router is not None:
            router.stop()
        if node is not None:
            node.stop()
        if redis is not None:
            redis.stop()
        print("cluster stopped", flush=True)
