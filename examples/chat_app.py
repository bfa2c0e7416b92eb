"""A complete ringcast application in one file: a backend and two chat clients.

The backend (what your application server does):
- mints connection tokens (HS256 JWTs signed with a key the workers know,
  `--jwt-secret KID=SECRET`), served to its users at `POST /token`;
- publishes over ringcast's HTTP API with an API key (`router.backend`,
  docs/api.md), with no WebSocket and no knowledge of which worker owns a room.

The clients (what your users run; browsers use clients/js/ringcast.js the
same way) are SDK `Client`s (docs/sdk.md) that fetch their token from the
backend with `get_token`, join a room, publish, read the room's presence and
history, and print what they receive.

Start a cluster with auth and an API key (`ringcast up` turns presence on
for every room), then run this file against its route service (docs/sdk.md,
"A complete app"):

    export RINGCAST_JWT_SECRETS=app=$(openssl rand -hex 32)
    export RINGCAST_API_KEYS=backend=$(openssl rand -hex 32)
    ringcast up &
    .venv/bin/python examples/chat_app.py --router http://127.0.0.1:8800

It exits 0 once both clients have received every message, 1 otherwise.
It is an example, not part of ringcast: nothing imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import aiohttp
import jwt
from aiohttp import web

from router.backend import Backend
from router.client import Client

TOKEN_LIFETIME_S = 300  # the SDK refreshes a token before it expires (Client(refresh_before_s=...))
MESSAGE_WAIT_S = 10.0  # how long a client waits for the messages it expects


# --- the backend ------------------------------------------------------------------------------


def mint_token(user: str, signing_key: tuple[str, str]) -> str:
    """A connection token for `user`: may join and publish to chat rooms and its own rooms."""
    kid, secret = signing_key
    now = int(time.time())
    claims = {
        "sub": user,  # members see it as the sender; presence lists it as the user
        "rooms": ["chat:*", f"user:{user}:*"],  # rooms the token may join (and read history/presence of)
        "publish": ["chat:*"],  # rooms it may publish to
        "info": {"name": user.title()},  # shown to the room in presence answers
        "iat": now,
        "exp": now + TOKEN_LIFETIME_S,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})


def token_service(signing_key: tuple[str, str]) -> web.Application:
    """`POST /token {"user": NAME}` -> `{"token": JWT}`. A real backend authenticates the user first."""

    async def issue(request: web.Request) -> web.Response:
        body = await request.json()
        user = body.get("user")
        if not isinstance(user, str) or not user.isalnum():
            return web.json_response({"error": "user must be letters and digits"}, status=400)
        return web.json_response({"token": mint_token(user, signing_key)})

    app = web.Application()
    app.router.add_post("/token", issue)
    return app


# --- a client ---------------------------------------------------------------------------------


def token_getter(backend_url: str, user: str):
    """The SDK's get_token: ask the backend for a fresh token (called before connecting and before expiry)."""

    async def get_token() -> str:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{backend_url}/token", json={"user": user}) as response:
                response.raise_for_status()
                return (await response.json())["token"]

    return get_token


async def receive(client: Client, user: str, expected: set[str]) -> list[str]:
    """Print every message `user` receives until all of `expected` arrived (or MESSAGE_WAIT_S passed)."""
    seen: list[str] = []
    async with asyncio.timeout(MESSAGE_WAIT_S):
        async for message in client:
            if message["type"] != "message":  # presence_diff events come through here too (with events on)
                print(f"{user} saw {message['type']}: joined {message.get('joined')} left {message.get('left')}")
                continue
            text = message.get("text")
            print(f"{user} got #{message['seq']} from {message['from']}: {text}", flush=True)
            seen.append(text)
            if expected <= set(seen):
                break
    return seen


# --- the app ----------------------------------------------------------------------------------


async def run(router_url: str, signing_key: tuple[str, str], api_key: str, room: str, backend_port: int) -> int:
    runner = web.AppRunner(token_service(signing_key))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", backend_port)
    await site.start()
    backend_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    print(f"backend   {backend_url}/token", flush=True)
    try:
        async with (
            Backend(router_url, api_key) as backend,
            Client(router_url, get_token=token_getter(backend_url, "alice")) as alice,
            Client(router_url, get_token=token_getter(backend_url, "bob")) as bob,
        ):
            await alice.join(room)
            await bob.join(room)
            presence = await alice.presence(room)
            print(f"presence  {room}: {sorted(m['user'] for m in presence['members'])}", flush=True)
            expected = {"welcome, everyone", "hi bob"}
            readers = [asyncio.create_task(receive(c, u, expected)) for c, u in ((alice, "alice"), (bob, "bob"))]
            published = await backend.publish(room, text="welcome, everyone")  # over HTTP, with the API key
            print(f"backend   published #{published['seq']} (epoch {published['epoch']})", flush=True)
            await alice.publish(room, "hi bob", retry=True)  # safe to retry: the SDK sends an idempotency key
            received = await asyncio.gather(*readers)
            history = await backend.history(room, limit=10)
            print(f"history   {[m.get('text') for m in history['messages']]}", flush=True)
    finally:
        await runner.cleanup()
    complete = all(expected <= set(seen) for seen in received)
    print("done: every message reached both clients" if complete else "missing messages", flush=True)
    return 0 if complete else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--router", default="http://127.0.0.1:8800", help="the route service (or any worker)")
    parser.add_argument("--room", default="chat:lobby", help="the room to chat in (presence needs --presence-rule on the node)")
    parser.add_argument("--backend-port", type=int, default=0, help="port of the token endpoint (0: any free one)")
    args = parser.parse_args(argv)
    # Secrets from the environment, the way the cluster reads them: never on a command line.
    secrets = os.environ.get("RINGCAST_JWT_SECRETS", "")
    api_keys = os.environ.get("RINGCAST_API_KEYS", "")
    if "=" not in secrets or "=" not in api_keys:
        parser.error("set RINGCAST_JWT_SECRETS=KID=SECRET and RINGCAST_API_KEYS=NAME=SECRET (the cluster's own)")
    kid, _, secret = secrets.split(",")[0].partition("=")
    api_key = api_keys.split(",")[0].partition("=")[2]
    return asyncio.run(run(args.router, (kid, secret), api_key, args.room, args.backend_port))


if __name__ == "__main__":
    sys.exit(main())
