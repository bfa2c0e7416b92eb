"""The Python helper for backends: publish, broadcast, history and presence over the HTTP API.

Owns one backend's client of the HTTP API (docs/api.md) of a route service or
of any worker (both serve it):

    async with Backend("http://127.0.0.1:8800", api_key=SECRET) as backend:
        ack = await backend.publish("lobby", text="deploy finished")   # {room, seq, epoch, duplicate}
        results = await backend.broadcast(["a", "b"], data={"v": 2})    # one result per room
        page = await backend.history("lobby", limit=50)

Retries are safe: every publish carries an idempotency key (the caller's, or
one generated per call and kept across that call's attempts), so a retry
after a connection error, a 503 (`BUS_UNAVAILABLE`, `PUBLISH_UNCONFIRMED`,
`WORKER_UNREACHABLE`, `NO_LIVE_WORKER`) or a timeout publishes at most once:
the answer is then the first publish's position with `duplicate: true`. A
broadcast retries only its rooms that failed, with the same key. Attempts
are bounded by `attempts` and by `deadline_s`, spaced by `router.backoff`.
Other errors raise `BackendError` at once with the server's code.

It must not hash rooms (the route service and workers do), open WebSockets
(router.client does) or import node.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from router.backoff import BackoffPolicy

__all__ = ["Backend", "BackendError", "BackendUnavailable", "RETRYABLE_CODES"]

MISSING: Any = object()
# Codes after which the same request, with the same idempotency key, is retried.
RETRYABLE_CODES = frozenset({"BUS_UNAVAILABLE", "PUBLISH_UNCONFIRMED", "WORKER_UNREACHABLE", "NO_LIVE_WORKER"})
CONNECTION_FAILED = "CONNECTION_FAILED"  # BackendUnavailable.code when no answer came at all


class BackendError(Exception):
    """The API refused the request (docs/api.md lists the codes); retrying the same request will not help."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.code = code
        self.message = message
        self.status = status


class BackendUnavailable(BackendError):
    """Every attempt failed with a retryable error; `code` is the last one's (CONNECTION_FAILED: no answer).

    After PUBLISH_UNCONFIRMED the publish may or may not have happened: call
    again with the same idempotency key to find out (a duplicate answers its position).
    """


class Backend:
    """A backend's HTTP API client. Use as `async with Backend(...) as backend:` (or call `close()`)."""

    def __init__(
        self, url: str, api_key: str, *, attempts: int = 5, deadline_s: float = 15.0,
        request_timeout_s: float = 5.0, backoff: BackoffPolicy = BackoffPolicy(base_s=0.2, factor=2.0, cap_s=2.0),
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """
        url: base URL of a route service or of any worker (http://host:port).
        api_key: the secret of one of the workers' --api-key NAME=SECRET entries.
        attempts: most tries of one request (1: no retry).
        deadline_s: no new attempt starts after this long since the call began.
        request_timeout_s: longest one attempt waits for its answer.
        backoff: delays between attempts.
        session: an aiohttp session to use (not closed by close()); default: one of its own.
        """
        if attempts < 1 or deadline_s <= 0 or request_timeout_s <= 0:
            raise ValueError("attempts >= 1, deadline_s > 0 and request_timeout_s > 0")
        self.url = url.rstrip("/")
        self.attempts = attempts
        self.deadline_s = deadline_s
        self.request_timeout_s = request_timeout_s
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session = session
        self._own_session = session is None
        self.retries = 0  # attempts made after a retryable failure, over this object's life

    async def __aenter__(self) -> "Backend":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- the API ------------------------------------------------------------------------------

    async def publish(self, room: str, data: Any = MISSING, text: str | None = None,
                      idempotency_key: str | None = None) -> dict[str, Any]:
        """Publish to `room` (exactly one of `data` or `text`): {room, seq, epoch, duplicate}."""
        body = {"room": room, **_data(data, text), "idempotency_key": idempotency_key or new_idempotency_key()}
        return await self._call("POST", "/v1/publish", body)

    async def broadcast(self, rooms: list[str], data: Any = MISSING, text: str | None = None,
                        idempotency_key: str | None = None) -> list[dict[str, Any]]:
        """Publish one message to every room of `rooms`: one result per room, in order,
        {room, seq, epoch, duplicate} or {room, error, message} for a room that failed for good."""
        key = idempotency_key or new_idempotency_key()
        payload = _data(data, text)
        results: dict[str, dict[str, Any]] = {}
        pending = list(rooms)
        started = time.monotonic()
        for attempt in range(self.attempts):
            answer = await self._call("POST", "/v1/broadcast", {"rooms": pending, **payload, "idempotency_key": key})
            for result in answer["results"]:
                results[result["room"]] = result
            pending = [r["room"] for r in answer["results"] if r.get("error") in RETRYABLE_CODES]
            if not pending or attempt + 1 == self.attempts or not await self._pause(attempt, started):
                break
        return [results[room] for room in rooms]

    async def history(self, room: str, since: tuple[int, str] | None = None, limit: int | None = None) -> dict[str, Any]:
        """The room's kept messages after `since` = (seq, epoch), or its latest ones: {room, seq, epoch, messages, complete}."""
        query: dict[str, str] = {}
        if since is not None:
            query["since_seq"], query["epoch"] = str(since[0]), since[1]
        if limit is not None:
            query["limit"] = str(limit)
        return await self._call("GET", f"/v1/rooms/{quote(room, safe='')}/history", None, query)

    async def presence(self, room: str) -> dict[str, Any]:
        """Who is in `room` (served only by clusters with presence; docs/api.md)."""
        return await self._call("GET", f"/v1/rooms/{quote(room, safe='')}/presence")

    # --- one request, with retries ------------------------------------------------------------

    async def _call(self, method: str, path: str, body: dict | None = None,
                    query: dict[str, str] | None = None) -> dict[str, Any]:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                status, answer = await self._once(method, path, body, query)
                if status < 400:
                    return answer
                code = str(answer.get("error", f"HTTP_{status}"))
                message = str(answer.get("message", ""))
                if code not in RETRYABLE_CODES and status not in (502, 504):
                    raise BackendError(code, message, status)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                status, code, message = 0, CONNECTION_FAILED, str(exc) or type(exc).__name__
            attempt += 1
            if attempt >= self.attempts or not await self._pause(attempt - 1, started):
                raise BackendUnavailable(code, f"{message} (after {attempt} attempts)", status)

    async def _pause(self, attempt: int, started: float) -> bool:
        """Sleep before the next attempt; False when that would pass the deadline."""
        delay = self.backoff.delay_s(attempt)
        if time.monotonic() - started + delay >= self.deadline_s:
            return False
        await asyncio.sleep(delay)
        self.retries += 1
        return True

    async def _once(self, method: str, path: str, body: dict | None,
                    query: dict[str, str] | None) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        async with self._session.request(method, self.url + path, json=body, params=query,
                                         headers=self._headers, timeout=timeout) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                answer = {"error": f"HTTP_{response.status}", "message": "the answer is not a JSON object"}
            return response.status, answer


def new_idempotency_key() -> str:
    """A fresh key (32 hex characters) for one logical publish."""
    return secrets.token_hex(16)


def _data(data: Any, text: str | None) -> dict[str, Any]:
    if (text is None) == (data is MISSING):
        raise ValueError("give exactly one of data or text")
    return {"text": text} if text is not None else {"data": data}
