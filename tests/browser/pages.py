"""Shared steps of the browser tests: open the demo page as a user, say something, read what it shows.

Every wait is Playwright's own bounded `expect` on what the page shows (DOM text), never a sleep.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from playwright.async_api import Browser, Locator, Page, Route, expect

from chaos.cluster import RouterProcess

RECONNECT_TIMEOUT_MS = 30_000  # a reconnect (backoff, lookup, a restarted worker) on a busy 2-core machine


class DemoPage:
    """One user's demo page, in its own browser context (its own cookies, storage and sockets)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.page_errors: list[str] = []  # uncaught exceptions in the page's scripts
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    @classmethod
    async def open(cls, browser: Browser, router: RouterProcess, name: str, room: str) -> "DemoPage":
        context = await browser.new_context(viewport={"width": 1000, "height": 640})
        demo = cls(await context.new_page())
        await demo.page.goto(router.url("/demo/?" + urlencode({"name": name, "room": room})))
        await expect(demo.state).to_have_attribute("data-state", "connected", timeout=RECONNECT_TIMEOUT_MS)
        await expect(demo.page.locator(f'#rooms li[data-room="{room}"]')).to_have_count(1)
        return demo

    @property
    def state(self) -> Locator:
        return self.page.locator("#state")

    @property
    def worker(self) -> Locator:
        return self.page.locator("#worker")

    @property
    def notices(self) -> Locator:
        return self.page.locator("#notices li")

    @property
    def errors(self) -> Locator:
        return self.page.locator("#errors li")

    def texts(self, room: str) -> Locator:
        """The text of every message the page shows for `room`, in the order shown."""
        return self.page.locator(f'#messages li[data-room="{room}"] .text')

    async def say(self, text: str) -> None:
        await self.page.fill("#text", text)
        await self.page.click("#send")

    async def hold_route_lookups(self) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold the page's `/route` lookups (Playwright keeps the request open, the page waits as for a slow
        router) until the returned `release` is set; `held` is set once a lookup is waiting."""
        held, release = asyncio.Event(), asyncio.Event()

        async def hold(route: Route) -> None:
            held.set()
            await release.wait()
            await route.continue_()

        await self.page.route("**/route?*", hold)
        return held, release
